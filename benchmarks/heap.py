"""Counterfactual passes of an image mechanism (abduct under the factual parents, predict under flipped ones; no
autograd) with glibc's default heap and with `imcf.memory.keep_freed_memory()`, each in a fresh process on one
thread: wall, user and system CPU seconds per pass, minor page faults, peak RSS.

    python benchmarks/heap.py [--run runs/<name>] [--batch 128] [--passes 2] [--out benchmarks/results/heap.json]

Without `--run` the default experiment's image mechanism with fresh weights (the cost does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import cpu_model, write_json  # benchmarks/ is on sys.path when a script runs

from imcf.memory import keep_freed_memory, user_heap_setting

ROOT = Path(__file__).resolve().parents[1]


def image_scm(run: str | None):
    """The run's trained SCM (as evaluate.py loads it), or the default experiment's with fresh weights; eval mode."""
    from validation_overhead import default_scm  # benchmarks/ is on sys.path when a script runs

    from imcf.evaluation import load_run

    if run:
        scm, _ = load_run(run)
        return scm.eval()
    return default_scm("cpu")


def worker(run: str | None, batch: int, passes: int, keep: bool) -> None:
    """Time `passes` counterfactual passes after one warm-up pass; print the result as JSON."""
    applied = keep_freed_memory() if keep else False
    torch.set_num_threads(1)
    torch.manual_seed(0)
    scm = image_scm(run)
    mech = scm.mechanisms["image"]
    with torch.no_grad():
        data = scm.sample(batch)
        x, parents = data["image"], {p: data[p] for p in mech.parents}
        flipped = {p: v.roll(1, 0) for p, v in parents.items()}  # another row's parents
        mech.predict(mech.abduct(x, parents), flipped)  # warm-up
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(passes):
            mech.predict(mech.abduct(x, parents), flipped)
        r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - w0
    print(json.dumps({
        "heap": "kept" if keep else "glibc default",
        "applied": applied,
        "wall_s": wall / passes,
        "user_s": (r1.ru_utime - r0.ru_utime) / passes,
        "system_s": (r1.ru_stime - r0.ru_stime) / passes,
        "minor_faults": (r1.ru_minflt - r0.ru_minflt) // passes,
        "peak_rss_mb": r1.ru_maxrss / 1024,
    }))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="a trained run directory (default: the default experiment, fresh)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "heap.json"))
    ap.add_argument("--worker", choices=["default", "keep"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.run, args.batch, args.passes, args.worker == "keep")
        return
    env = {k: v for k, v in os.environ.items() if not user_heap_setting(k)}
    env["OMP_NUM_THREADS"] = "1"
    rows = []
    for mode in ("default", "keep"):
        cmd = [sys.executable, __file__, "--worker", mode, "--batch", str(args.batch), "--passes", str(args.passes)]
        cmd += ["--run", args.run] if args.run else []
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    rows[1]["wall_speedup"] = rows[0]["wall_s"] / rows[1]["wall_s"]
    print(f"counterfactual passes, {args.run or 'default experiment (fresh weights)'}, batch {args.batch}, one thread;"
          f" {cpu_model()}")  # fmt: skip
    print(f"{'heap':14s} {'wall s':>8s} {'user s':>8s} {'sys s':>8s} {'faults':>10s} {'RSS MB':>8s} {'speed-up':>8s}")
    for r in rows:
        ratio = f"{r['wall_speedup']:.2f}x" if "wall_speedup" in r else ""
        print(f"{r['heap']:14s} {r['wall_s']:8.2f} {r['user_s']:8.2f} {r['system_s']:8.2f} {r['minor_faults']:10d} "
              f"{r['peak_rss_mb']:8.0f} {ratio:>8s}")  # fmt: skip
    write_json(args.out, {"run": args.run, "batch": args.batch, "passes": args.passes}, rows)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
