"""Time the quickstart's main job: `python train.py` with the defaults (training + evaluation), from scratch.

Runs in a fresh working directory for data, runs and reports (dataset generation included unless
`--data-root` points at an existing cache), and records wall time per phase as printed by train.py.

    python benchmarks/quickstart.py [--data-root DIR] [extra Hydra overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None, help="reuse a data cache (default: a fresh temporary one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/quickstart.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imcf-quickstart-"))
    data_root = args.data_root or str(work / "data")
    cmd = [
        sys.executable, str(ROOT / "train.py"),
        f"data_root={data_root}", f"run_dir={work / 'run'}", f"evaluate.report_dir={work / 'report'}",
        f"hydra.run.dir={work / 'hydra'}", "trainer.enable_progress_bar=false", *args.overrides,
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    stamps: list[tuple[float, str]] = []
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        for line in p.stdout:
            if line.startswith("[imcf]"):
                stamps.append((time.perf_counter() - start, line.strip()))
                print(f"{stamps[-1][0]:8.1f}s  {line.rstrip()}")
        rc = p.wait()
    total = time.perf_counter() - start
    report = next((m.group(1) for _, s in stamps if (m := re.search(r"evaluation report: (\S+)", s))), None)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "load_average_after": os.getloadavg(),
        "returncode": rc,
        "total_s": total,
        "phases": [{"t_s": t, "line": s} for t, s in stamps],
        "report": report,
        "overrides": args.overrides,
    }
    print(f"\nquickstart: rc={rc}, total {total / 60:.1f} min, report {report}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    sys.exit(rc)


if __name__ == "__main__":
    main()
