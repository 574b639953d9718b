"""The image unit's training speed (batches/s) on the default model, alone and beside a second busy process on the
same cores, before (torch's default thread count) and after (the thread plan of imcf.threads).

Each measurement runs in a fresh process (torch takes its inter-op thread count once), with OMP_NUM_THREADS and
MKL_NUM_THREADS removed from its environment so that "before" is torch's own default. The busy neighbour is a
second process training the same unit with the same thread setting: two jobs of one kind sharing the CPUs this
script is given. A training step is the image mechanism's loss, backward and an Adam step on a batch drawn from
the default SCM (fresh weights cost the same as trained ones).

    python benchmarks/threads.py [--batch 64] [--steps 40] [--threads N]   # N: the plan's `threads=` (default auto)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import cpu_model  # benchmarks/ is on sys.path when a script runs

from imcf.threads import available_cpus, plan_threads

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def worker(intra: int, interop: int, batch: int, steps: int, warmup: int) -> None:
    """Train the image unit for `steps` batches (0: until killed); print {"batches_per_s", "intra_op"} as JSON."""
    from hydra import compose, initialize_config_dir

    from imcf.training.run import build_scm

    if intra > 0:  # 0: torch's default
        torch.set_num_threads(intra)
    if interop > 0:
        torch.set_num_interop_threads(interop)
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name="train")
    scm, _ = build_scm(cfg)
    with torch.no_grad():
        data = scm.sample(batch)
    mech = scm.mechanisms["image"].train()
    parents = {p: data[p] for p in mech.parents}
    opt = torch.optim.Adam(mech.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        mech.loss(data["image"], parents)["loss"].backward()
        opt.step()

    for _ in range(warmup):
        step()
    if steps <= 0:
        while True:
            step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    print(json.dumps({"batches_per_s": steps / elapsed, "intra_op": torch.get_num_threads()}), flush=True)


def child_env() -> dict[str, str]:
    """This environment without the thread-count variables: "before" is torch's own default."""
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def measure(intra: int, interop: int, args: argparse.Namespace, busy: bool) -> dict:
    """One fresh measuring process, with (busy) or without a neighbour that trains the same unit meanwhile."""
    base = [sys.executable, __file__, "--worker", "--intra", str(intra), "--interop", str(interop)]
    base += ["--batch", str(args.batch), "--warmup", str(args.warmup)]
    neighbour = None
    if busy:
        neighbour = subprocess.Popen([*base, "--steps", "0"], env=child_env(), stdout=subprocess.DEVNULL)
        time.sleep(args.settle)  # let it import and reach its training loop
    try:
        out = subprocess.run([*base, "--steps", str(args.steps)], env=child_env(), capture_output=True, text=True)
    finally:
        if neighbour is not None:
            neighbour.terminate()
            neighbour.wait()
    if out.returncode != 0:
        raise RuntimeError(f"measuring process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--settle", type=float, default=8.0, help="seconds the neighbour runs before measuring")
    ap.add_argument("--threads", type=int, default=None, help="the plan's threads= setting (default: auto)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--intra", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--interop", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.intra, args.interop, args.batch, args.steps, args.warmup)
        return

    cpus, source = available_cpus()
    plan = plan_threads(cpus, source, threads=args.threads)  # the user's OMP_NUM_THREADS is left out on purpose
    rows = []
    for setting, intra, interop in (("before", 0, 0), ("after", plan.intra_op, plan.interop)):
        for busy in (False, True):
            r = measure(intra, interop, args, busy)
            rows.append({"setting": setting, "neighbour": busy, **r})
    for before, after in zip(rows[:2], rows[2:]):  # the same neighbour setting, before and after
        after["speedup"] = after["batches_per_s"] / before["batches_per_s"]

    machine = {"cpu": cpu_model(), "cpus": cpus, "cpus_from": source, "torch": torch.__version__}
    print(f"image unit training, default model, batch {args.batch}, {args.steps} steps; {machine['cpu']}")
    print(f"plan: {plan.describe()}")
    print(f"{'setting':8s} {'neighbour':>9s} {'intra-op':>8s} {'batches/s':>10s} {'after/before':>12s}")
    for r in rows:
        ratio = f"{r['speedup']:11.2f}x" if "speedup" in r else ""
        print(
            f"{r['setting']:8s} {'busy' if r['neighbour'] else 'none':>9s} {r['intra_op']:8d} "
            f"{r['batches_per_s']:10.2f} {ratio:>12s}"
        )
    dest = Path(__file__).parent / "results" / "threads.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    record = {k: v for k, v in vars(args).items() if k not in ("worker", "intra", "interop")}
    record.update(plan=plan.describe(), machine=machine, results=rows)
    dest.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {dest}")


if __name__ == "__main__":
    main()
