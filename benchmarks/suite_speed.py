"""The README's test command in one process (`-n 0`, the suite before pytest-xdist) and as configured (one process
per CPU given, `-n auto`), one after the other on the same machine: wall time, CPU time of pytest and its children,
and the ratio. Whatever else runs on the machine runs beside both (say so when reporting).

    python benchmarks/suite_speed.py [--out benchmarks/results/suite_speed.json] [-- extra pytest arguments]
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model, write_json  # benchmarks/ is on sys.path when a script runs

from imcf.threads import available_cpus

ROOT = Path(__file__).resolve().parents[1]


def run_suite(extra: list[str]) -> dict:
    """Run `python -m pytest -q <extra>` in the repository root; wall and children's CPU seconds, the summary line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *extra], cwd=ROOT, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    return {
        "args": extra,
        "returncode": proc.returncode,
        "summary": lines[-1].strip("= ") if lines else proc.stdout[-300:],
        "wall_s": round(wall, 1),
        "user_s": round(after.ru_utime - before.ru_utime, 1),
        "system_s": round(after.ru_stime - before.ru_stime, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "suite_speed.json"))
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    rows = [{"setting": "one process (-n 0)", **run_suite(["-n", "0", *extra])}]
    rows.append({"setting": "as configured (-n auto)", **run_suite(extra)})
    rows[1]["wall_ratio"] = round(rows[0]["wall_s"] / rows[1]["wall_s"], 2)
    cpus, _ = available_cpus()
    print(f"pytest {' '.join(extra)}; {cpu_model()}, {cpus} CPUs")
    print(f"{'setting':26s} {'wall s':>8s} {'user s':>8s} {'sys s':>7s} {'speed-up':>8s}  summary")
    for r in rows:
        ratio = f"{r['wall_ratio']:.2f}x" if "wall_ratio" in r else ""
        times = f"{r['wall_s']:8.1f} {r['user_s']:8.1f} {r['system_s']:7.1f}"
        print(f"{r['setting']:26s} {times} {ratio:>8s}  {r['summary']}")
    write_json(args.out, {"cpus": cpus, "pytest_args": extra}, rows)
    print(f"\nwrote {args.out}")
    if any(r["returncode"] != 0 for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
