"""Conditional BiGAN on embedded Morpho-MNIST: train each variant for a fixed CPU time through the Lightning
unit module, then measure reconstruction, counterfactual thickness effectiveness and speed on the test split.

    python benchmarks/gan_image.py [--data-root data] [--num-samples 2500] [--train-seconds 180]
                                   [--variants nonsaturating_r1 hinge_spectral_norm]

Effectiveness: each test image gets do(thickness = t'), t' = its measured thickness + 1.5 px when below the
median, - 1.5 px otherwise; intensity and digit kept. "toward" is the fraction whose counterfactual measures
thicker when t' is thicker (thinner when thinner); "shift" is the mean |measured cf - measured factual|.
Writes benchmarks/results/gan_image.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from imcf.data import morphomnist as mm
from imcf.data.morphomnist.dataset import MorphoMNIST
from imcf.graph import CausalGraph
from imcf.io import read_yaml
from imcf.mechanisms.gan import ConditionalGAN
from imcf.training.module import UnitModule

ROOT = Path(__file__).resolve().parents[1]
PARENTS = ("thickness", "intensity", "digit")
VARIANTS: dict[str, dict[str, Any]] = {
    "nonsaturating_r1": {"loss": "nonsaturating", "regularizer": "r1"},
    "hinge_spectral_norm": {"loss": "hinge", "regularizer": "spectral_norm"},
    "nonsaturating_r1_recon": {"loss": "nonsaturating", "regularizer": "r1", "recon_weight": 1.0},
}
#: fixed normalisation of the Morpho-MNIST parents (thickness in px, intensity in grey levels)
PARENT_RANGES = {"thickness": [0.5, 6.5], "intensity": [64.0, 255.0]}


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack the image and its parents (the dataset's other keys are not needed for training)."""
    return {k: torch.stack([r[k] for r in rows]) for k in ("image", *PARENTS)}


class TimeBudget(L.Callback):
    """Adversarial training for `seconds`, then `finetune_batches` encoder-only batches, then stop."""

    def __init__(self, mech: ConditionalGAN, seconds: float, finetune_batches: int) -> None:
        self.mech, self.seconds, self.finetune_batches = mech, seconds, finetune_batches
        self.start = time.perf_counter()
        self.adversarial_seconds = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        ft = self.mech.encoder_finetune
        if ft["after_steps"] is None and time.perf_counter() - self.start > self.seconds:
            ft["after_steps"] = int(self.mech.train_batches)
            self.adversarial_seconds = time.perf_counter() - self.start
        if ft["after_steps"] is not None and int(self.mech.train_batches) >= ft["after_steps"] + self.finetune_batches:
            trainer.should_stop = True


def train_gan(
    graph: CausalGraph, train_set: MorphoMNIST, config: dict[str, Any], seconds: float, finetune_batches: int
) -> tuple[ConditionalGAN, dict[str, float]]:
    """Train through UnitModule + lightning.Trainer for `seconds` of adversarial training plus fine-tuning."""
    mech = ConditionalGAN.from_graph(graph, "image", **config)
    budget = TimeBudget(mech, seconds, finetune_batches)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=10_000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[budget],
    )
    start = time.perf_counter()
    loader = DataLoader(train_set, batch_size=64, shuffle=True, collate_fn=collate)
    trainer.fit(UnitModule({"image": mech}, {"lr": 1e-3}), loader)
    total = time.perf_counter() - start
    adversarial = int(mech.encoder_finetune["after_steps"] or mech.train_batches)
    mech.eval()
    return mech, {
        "train_seconds": total,
        "adversarial_batches": adversarial,
        "finetune_batches": int(mech.train_batches) - adversarial,
        "seconds_per_adversarial_batch": budget.adversarial_seconds / max(1, adversarial),
    }


@torch.no_grad()
def thickness_effectiveness(mech: ConditionalGAN, batch: dict[str, torch.Tensor], shift: float = 1.5) -> dict:
    """do(thickness = measured +- `shift`): fraction moving toward the target, |measured cf - target|."""
    x = batch["image"]
    pa = {p: batch[p] for p in PARENTS}
    measured = torch.tensor(mm.measure_batch(x.numpy(), features=("thickness",))["thickness"], dtype=torch.float32)
    target = torch.where(measured < measured.median(), measured + shift, measured - shift)
    cf = mech.predict(mech.abduct(x, pa), {**pa, "thickness": target[:, None]})
    cf_measured = torch.tensor(mm.measure_batch(cf.numpy(), features=("thickness",))["thickness"], dtype=torch.float32)
    toward = torch.sign(cf_measured - measured) == torch.sign(target - measured)
    return {
        "pairs": len(x),
        "toward_target": float(toward.float().mean()),
        "cf_thickness_mae": float((cf_measured - target).abs().mean()),
        "thickness_shift": float((cf_measured - measured).abs().mean()),
    }


@torch.no_grad()
def evaluate(mech: ConditionalGAN, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Reconstruction without the residual, sample-thickness correlation, effectiveness and speed."""
    x = batch["image"]
    pa = {p: batch[p] for p in PARENTS}
    start = time.perf_counter()
    noise = mech.abduct(x, pa)
    abduct_s = time.perf_counter() - start
    start = time.perf_counter()
    mech.predict(noise, pa)
    predict_s = time.perf_counter() - start
    recon = mech.decode(noise, mech.condition(pa, len(x)))
    samples = mech.sample(pa)
    sample_t = mm.measure_batch(samples.numpy(), features=("thickness",))["thickness"]
    ok = np.isfinite(sample_t)
    return {
        "recon_mse_no_residual": float(((recon - x) ** 2).mean()),
        "recon_mae_no_residual": float((recon - x).abs().mean()),
        "sample_thickness_corr": float(np.corrcoef(sample_t[ok], pa["thickness"][ok, 0].numpy())[0, 1]),
        **thickness_effectiveness(mech, batch),
        "abduct_images_per_s": len(x) / abduct_s,
        "predict_images_per_s": len(x) / predict_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--num-samples", type=int, default=2500)
    parser.add_argument("--train-seconds", type=float, default=180.0)
    parser.add_argument("--finetune-batches", type=int, default=60)
    parser.add_argument("--variants", nargs="+", default=["nonsaturating_r1", "hinge_spectral_norm"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/gan_image.json"))
    args = parser.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {sorted(VARIANTS)}")
    torch.set_num_threads(args.threads)
    graph = CausalGraph.from_dict(read_yaml(ROOT / "configs/graph/morphomnist.yaml"))
    base = read_yaml(ROOT / "configs/mechanism/image/gan.yaml")["config"]
    options = {"num_samples": args.num_samples}
    train_set = MorphoMNIST(args.data_root, "train", **options)
    test = collate([r for r in MorphoMNIST(args.data_root, "test", **options)])
    results = {}
    for name in args.variants:
        L.seed_everything(0)
        config = {**base, **VARIANTS[name], "parent_ranges": PARENT_RANGES}
        mech, timing = train_gan(graph, train_set, config, args.train_seconds, args.finetune_batches)
        results[name] = {**timing, **evaluate(mech, test), "config": config}
        print(f"[gan_image] {name}: {json.dumps({k: v for k, v in results[name].items() if k != 'config'})}")
    header = [
        "variant",
        "adv batches",
        "s/batch",
        "recon MSE",
        "toward target",
        "cf |t-t'|",
        "shift px",
        "sample corr",
        "abduct img/s",
    ]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, r in results.items():
        row = [
            name,
            r["adversarial_batches"],
            f"{r['seconds_per_adversarial_batch']:.2f}",
            f"{r['recon_mse_no_residual']:.3f}",
            f"{r['toward_target']:.2f} ({r['pairs']})",
            f"{r['cf_thickness_mae']:.2f}",
            f"{r['thickness_shift']:.2f}",
            f"{r['sample_thickness_corr']:.2f}",
            f"{r['abduct_images_per_s']:.0f}",
        ]
        print("| " + " | ".join(str(c) for c in row) + " |")
    meta = {"num_samples": args.num_samples, "train_seconds": args.train_seconds, "threads": args.threads}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"[gan_image] wrote {args.out}")


if __name__ == "__main__":
    main()
