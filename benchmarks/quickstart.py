"""Time the quickstart's main job: `python train.py` with the defaults (training + evaluation), from scratch.

Each configuration runs twice in its own working directory: first with a fresh data root (Morpho-MNIST
generation and the evaluator's models included), then again on that data root (data and evaluator models
cached). Reported per run: wall time, CPU time (the job and every process it waited for), peak RSS, the CPU
time at each phase train.py prints, and the report's metrics (its metrics.json, kept in the JSON). Several
configurations in one call give same-script ratios against the first:

    python benchmarks/quickstart.py                                  # the defaults only
    python benchmarks/quickstart.py --baseline 9ecda29               # the defaults of that commit, then today's
    python benchmarks/quickstart.py --config a="trainer.max_epochs=5" --config b=""
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and of its children it has waited for (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return sum(int(f) for f in fields[11:15]) / TICKS  # utime, stime, cutime, cstime


def run_job(overrides: list[str], work: Path, data_root: Path, root: Path = ROOT) -> dict:
    """Run `root`/train.py once; return wall/CPU time, peak RSS, phases, the report's path and its metrics."""
    cmd = [
        sys.executable, str(root / "train.py"),
        f"data_root={data_root}", f"run_dir={work / 'run'}", f"evaluate.report_dir={work / 'report'}",
        f"hydra.run.dir={work / 'hydra'}", "trainer.enable_progress_bar=false", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    phases: list[dict] = []
    with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        for line in p.stdout:
            if line.startswith("[imcf]"):
                phases.append({"t_s": time.perf_counter() - start, "cpu_s": _cpu_seconds(p.pid), "line": line.strip()})
                print(f"{phases[-1]['t_s']:8.1f}s {phases[-1]['cpu_s']:8.1f} CPU-s  {line.rstrip()}", flush=True)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    report = next((m.group(1) for ph in phases if (m := re.search(r"evaluation report: (\S+)", ph["line"]))), None)
    metrics = Path(report).with_name("metrics.json") if report else None
    return {
        "returncode": p.returncode,
        "wall_s": time.perf_counter() - start,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "phases": phases,
        "report": report,
        "metrics": json.loads(metrics.read_text())["metrics"] if metrics and metrics.exists() else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", action="append", default=[], metavar="NAME=OVERRIDES",
        help="a configuration to time: a name and its Hydra overrides in one shell-quoted string (repeatable)",
    )  # fmt: skip
    ap.add_argument("--baseline", metavar="REV", help="first time the defaults of this git revision (a worktree)")
    ap.add_argument("--cached-only", action="store_true", help="skip the fresh-data run (needs --data-root)")
    ap.add_argument("--data-root", default=None, help="reuse this data cache instead of a fresh one")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/quickstart.json"))
    args = ap.parse_args()
    configs = [c.split("=", 1) if "=" in c else (c, "") for c in args.config] or [("default", "")]
    roots = {name: ROOT for name, _ in configs}
    if args.baseline:
        tree = Path(tempfile.mkdtemp(prefix="imcf-baseline-")) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline], check=True)
        configs.insert(0, (f"before ({args.baseline})", ""))
        roots[configs[0][0]] = tree
    results = []
    for name, overrides in configs:
        work = Path(tempfile.mkdtemp(prefix="imcf-quickstart-"))
        data_root = Path(args.data_root) if args.data_root else work / "data"
        for data in ["cached"] if args.cached_only else ["fresh", "cached"]:
            print(f"== {name} ({data} data): {overrides or 'defaults'}", flush=True)
            res = run_job(shlex.split(overrides), work / data, data_root, roots[name])
            results.append({"config": name, "overrides": overrides, "data": data, "root": str(roots[name]), **res})
            print(
                f"== {name} ({data}): rc={res['returncode']} wall {res['wall_s']:.0f} s, CPU {res['cpu_s']:.0f} s, "
                f"peak RSS {res['peak_rss_mb']:.0f} MB, report {res['report']}",
                flush=True,
            )
    base = {r["data"]: r["cpu_s"] for r in results if r["config"] == configs[0][0]}
    if args.baseline:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    print(f"\n{'config':>18} {'data':>7} {'wall s':>8} {'CPU s':>8} {'CPU ratio':>10} {'peak RSS MB':>12}")
    for r in results:
        ratio = r["cpu_s"] / base[r["data"]] if base.get(r["data"]) else float("nan")
        r["cpu_ratio_to_first"] = ratio
        row = f"{r['wall_s']:8.0f} {r['cpu_s']:8.0f} {ratio:10.2f} {r['peak_rss_mb']:12.0f}"
        print(f"{r['config']:>18} {r['data']:>7} {row}")
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cpus": os.cpu_count()}
    meta["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    sys.exit(max(abs(r["returncode"]) for r in results))


if __name__ == "__main__":
    main()
