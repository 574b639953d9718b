"""What the adversarial realism term costs per training step of the default image mechanism.

The default experiment's VAE (fresh weights, `python train.py`'s config plus each setting's overrides), a factual
batch `scm.sample(batch)`; one step = the image mechanism's loss, backward and an Adam step, with the term past its
warm-up (full weight). The settings alternate over `--repeats` rounds (round 0 dropped); medians of the process's
CPU time, and each setting's ratio to the step without the term, measured in the same script.

    python benchmarks/adversarial_speed.py [--batch 64] [--repeats 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from machine import write_json  # benchmarks/ is on sys.path when a script runs

from imcf.training.run import build_scm

ROOT = Path(__file__).resolve().parents[1]
ADV = "mechanism.image.config.adversarial."

#: setting -> overrides of the default experiment (weight 0.02: the measured realism setting)
SETTINGS: dict[str, list[str]] = {
    "off (default)": [],
    "residual [16,32,64], fraction 1": [f"{ADV}weight=0.02"],
    "residual [16,32,64], fraction 0.5": [f"{ADV}weight=0.02", f"{ADV}fraction=0.5"],
    "residual [8,16,32], fraction 0.5": [f"{ADV}weight=0.02", f"{ADV}fraction=0.5", f"{ADV}widths=[8,16,32]"],
    "strided [16,32,64], fraction 1": [f"{ADV}weight=0.02", f"{ADV}layout=strided"],
    "strided [32,64,128], fraction 1": [f"{ADV}weight=0.02", f"{ADV}layout=strided", f"{ADV}widths=[32,64,128]"],
    "strided [32,64,128], fraction 0.5": [
        f"{ADV}weight=0.02", f"{ADV}layout=strided", f"{ADV}widths=[32,64,128]", f"{ADV}fraction=0.5",
    ],
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "adversarial_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = {}
    for name, overrides in SETTINGS.items():
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        torch.manual_seed(0)
        scm, _ = build_scm(cfg)
        image = scm.mechanisms["image"]
        if image.critic is not None:
            adv = image.adversarial
            image.adversarial_steps.fill_(int(adv["start"]) + int(adv["warmup"]))  # past the warm-up: full weight
        if not steps:
            with torch.no_grad():
                factual = scm.sample(args.batch)
        steps[name] = (image, torch.optim.Adam(image.parameters(), lr=1e-4))
    x = factual["image"]
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.repeats + 1):  # round 0 warms up and is dropped
        for name, (image, opt) in steps.items() if r % 2 else reversed(steps.items()):
            image.train()
            t = time.process_time()
            loss = image.loss(x, {p: factual[p] for p in image.parents})["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if r:
                times[name].append(time.process_time() - t)
    base = statistics.median(times["off (default)"])
    rows = [{"setting": n, "step_ms": 1e3 * statistics.median(t), "ratio": statistics.median(t) / base}
            for n, t in times.items()]  # fmt: skip
    print(f"default VAE training step, batch {args.batch}, {args.threads} thread(s), {args.repeats} repeats")
    print(f"{'setting':36s} {'CPU ms':>8s} {'x off':>6s}")
    for row in rows:
        print(f"{row['setting']:36s} {row['step_ms']:8.1f} {row['ratio']:6.2f}")
    write_json(args.out, {"batch": args.batch, "threads": args.threads, "repeats": args.repeats}, rows)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
