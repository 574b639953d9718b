"""The image mechanism's memory layout on CPU: a training step and a counterfactual, channels-first (NCHW, what
torch gives by default) against channels-last (`imcf.nn.conv.cpu_layout`, what the conv blocks use on CPU).

The default model (experiment=morphomnist, fresh weights), factual batch `scm.sample(batch)`. "train step": the
image mechanism's loss, backward and an Adam step on a batch of `--train-batch`; "counterfactual": do(thickness)
through `SCM.counterfactual` on the whole batch. The two layouts alternate over `--repeats` rounds; medians of the
process's CPU time.

    python benchmarks/image_speed.py [--batch 256] [--repeats 10] [--threads 1] [--train-batch 64]
"""

from __future__ import annotations

import statistics
import sys
from contextlib import contextmanager

import torch
from validation_overhead import cpu_seconds, machine_info, setup, write_results  # benchmarks/ is on sys.path

import imcf.nn.conv as conv

LAYOUTS = {"channels_first": lambda x: x.contiguous(), "channels_last": conv.cpu_layout}


@contextmanager
def layout(name: str):
    """Run the conv blocks with the named layout (the module's `cpu_layout` swapped for the duration)."""
    saved = conv.cpu_layout
    conv.cpu_layout = LAYOUTS[name]
    try:
        yield
    finally:
        conv.cpu_layout = saved


def main() -> None:
    train_batch = 64
    if "--train-batch" in sys.argv:  # ours; the rest are the shared query-benchmark arguments
        i = sys.argv.index("--train-batch")
        train_batch = int(sys.argv[i + 1])
        del sys.argv[i : i + 2]
    args, scm, sync, factual, queries = setup(__doc__.splitlines()[0])
    image = scm.mechanisms["image"]
    do = queries["do(thickness)"]
    x, pa = factual["image"][:train_batch], {p: factual[p][:train_batch] for p in image.parents}
    opt = torch.optim.Adam(image.parameters(), lr=1e-4)

    def train_step():
        image.train()
        loss = image.loss(x, pa)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        image.eval()

    @torch.no_grad()
    def counterfactual():
        scm.counterfactual(factual, do)

    times = {(k, n): [] for k in ("train_step", "counterfactual") for n in LAYOUTS}
    for r in range(args.repeats + 1):  # round 0 warms up both layouts and is dropped
        for name in LAYOUTS if r % 2 == 0 else reversed(LAYOUTS):
            with layout(name):
                for what, fn in (("train_step", train_step), ("counterfactual", counterfactual)):
                    t = cpu_seconds(fn, sync)
                    if r:
                        times[(what, name)].append(t)
    rows = []
    for what, n in (("train_step", train_batch), ("counterfactual", args.batch)):
        first = statistics.median(times[(what, "channels_first")])
        last = statistics.median(times[(what, "channels_last")])
        rows.append({"what": what, "batch": n, "channels_first_ms": 1e3 * first, "channels_last_ms": 1e3 * last,
                     "speedup": first / last})  # fmt: skip
    machine = machine_info(args.device)
    print(f"default image mechanism, {args.repeats} repeats, {args.threads} thread(s); {machine['cpu']}")
    print(f"{'':15s} {'batch':>6s} {'channels-first':>15s} {'channels-last':>14s} {'speed-up':>9s}")
    for r in rows:
        print(f"{r['what']:15s} {r['batch']:6d} {r['channels_first_ms']:12.1f} ms {r['channels_last_ms']:11.1f} ms "
              f"{r['speedup']:9.2f}")  # fmt: skip
    write_results("image_speed", args, machine, rows)


if __name__ == "__main__":
    main()
