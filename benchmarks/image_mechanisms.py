"""Image mechanism families on embedded Morpho-MNIST: speed, memory and counterfactual quality after a fixed
training budget. Families are looked up in the registry and built from configs/mechanism/image/<config>.yaml.

    python benchmarks/image_mechanisms.py [--families vae hvae] [--configs vae hvae] [--train-seconds 240]
        [--num-samples 1500] [--data-root data] [--device cpu|cuda] [--threads 1]
        [--steps-sweep 10 25 50 100] [--sweep-batch 64]

Each family runs in its own subprocess (so peak memory is its own). Training: a plain torch loop over
`mech.loss` (Adam, lr 1e-3, batch 64, gradient clipping/skipping via `mech.stabilise_gradients()` when the
family has it); families with `manual_optimization` (adversarial) train through `imcf.training.UnitModule`.
Measured on the test split, with intensity following the TRUE Morpho-MNIST mechanism when thickness is
intervened on (so only the image mechanism is scored):
  - effectiveness: do(thickness) / do(intensity) with values drawn as the published protocol does (another
    test value in a different one of 9 bins); |measured - target| thickness (px) and intensity (grey levels)
    with imcf's morphometrics (`imcf.data.morphomnist.measure_batch`), and the fraction of counterfactuals
    whose measured thickness is closer to the target than the factual's;
  - composition: the null intervention applied 1 and 10 times, image L1 on 0..255 (imcf.metrics.composition),
    with the pixel residual as configured and without it;
  - reversibility: do(thickness = t') then do(thickness = t), image L1 to the factual (imcf.metrics.reversibility);
  - reconstruction MAE without the residual on [-1, 1];
  - training images/s, counterfactuals/s (abduct + predict, batch 256), peak memory (RSS on CPU, allocated on GPU);
  - for families with a step count (`num_inference_steps`: DDIM), counterfactuals/s at each of `--steps-sweep`
    (batch `--sweep-batch`); the quality numbers above use the config's own step count.
  - digit: do(digit) to another digit drawn uniformly, scored by the evaluator's anti-causal digit classifier
    (`imcf.evaluators.predictors`, trained once on the same training split and cached under <data-root>/evaluators;
    its accuracy on the factual test images is reported beside it), and the digit kept under do(thickness).
Families without a pixel residual (DDIM) report their composition / reversibility in the "no res." columns.
Writes benchmarks/results/image_mechanisms.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import imcf.mechanisms  # noqa: F401  (fills the registry)
from imcf.config import PredictorConfig, mechanism_preset
from imcf.data import morphomnist as mm
from imcf.data.morphomnist.dataset import MorphoMNIST
from imcf.evaluators.predictors import AttributePredictor, load_or_train_predictors
from imcf.graph import CausalGraph
from imcf.metrics.composition import image_l1, null_intervention, repeat
from imcf.metrics.reversibility import round_trips
from imcf.registry import MECHANISMS

ROOT = Path(__file__).resolve().parents[1]
PARENTS = ("thickness", "intensity", "digit")
PARENT_RANGES = {"thickness": [0.5, 6.5], "intensity": [64.0, 255.0]}
SCALED = {"thickness": (0.88, 6.26), "intensity": (66.6, 254.9)}  # protocol's min-max ranges for the bins


def load_split(root: str, split: str, num_samples: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The whole split as one batch (image, parents, and the intensity noise of the true SCM)."""
    ds = MorphoMNIST(root=root, split=split, num_samples=num_samples)
    keys = ("image", *PARENTS, "_u_intensity")
    return {k: ds._values[k].to(device) for k in keys}


def build(family: str, config_name: str, graph: CausalGraph) -> Any:
    spec = mechanism_preset(ROOT / "configs" / "mechanism" / "image" / f"{config_name}.yaml", graph="morphomnist")
    if spec["family"] != family:
        raise ValueError(f"configs/mechanism/image/{config_name}.yaml is for {spec['family']!r}, not {family!r}")
    config = dict(spec["config"])
    config["parent_ranges"] = config.get("parent_ranges") or PARENT_RANGES
    return MECHANISMS[family].from_graph(graph, "image", **config)


def train(mech: Any, data: dict[str, torch.Tensor], seconds: float, batch_size: int = 64) -> dict[str, float]:
    """Train for `seconds` of wall time; returns steps, images/s."""
    if getattr(mech, "manual_optimization", False):
        return train_lightning(mech, data, seconds, batch_size)
    opt = torch.optim.Adam(mech.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    n = len(data["image"])
    steps = skipped = 0
    mech.train()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        idx = torch.randint(n, (batch_size,), generator=gen).to(data["image"].device)
        loss = mech.loss(data["image"][idx], {p: data[p][idx] for p in PARENTS})["loss"]
        opt.zero_grad()
        loss.backward()
        skip = mech.stabilise_gradients()[1] if hasattr(mech, "stabilise_gradients") else False
        if skip:
            skipped += 1
        else:
            opt.step()
        steps += 1
    elapsed = time.perf_counter() - start
    mech.eval()
    return {"train_steps": steps, "skipped_steps": skipped, "train_images_per_s": steps * batch_size / elapsed}


def train_lightning(mech: Any, data: dict[str, torch.Tensor], seconds: float, batch_size: int) -> dict[str, float]:
    """Adversarial families: Lightning UnitModule for `seconds`."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from imcf.training.module import UnitModule

    keys = ("image", *PARENTS)
    ds = TensorDataset(*(data[k].cpu() for k in keys))
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=True, collate_fn=lambda rows: dict(zip(keys, map(torch.stack, zip(*rows))))
    )
    trainer = L.Trainer(
        max_time={"seconds": seconds}, max_epochs=100_000, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="auto",
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(UnitModule({"image": mech}, {"lr": 1e-3}), loader)
    elapsed = time.perf_counter() - start
    mech.eval()
    # manual optimisation counts optimiser steps in global_step (two per adversarial batch): count batches
    batches = int(getattr(mech, "train_batches", trainer.global_step))
    return {"train_steps": batches, "train_images_per_s": batches * batch_size / elapsed}


def digit_classifier(data_root: str, num_samples: int) -> AttributePredictor:
    """The evaluator's digit classifier for this dataset (trained on its training split once, then cached)."""
    cfg = PredictorConfig(max_epochs=10)
    model, quality, _ = load_or_train_predictors(
        "morphomnist", {"num_samples": num_samples}, data_root, "image", (1, 32, 32),
        {"digit": "categorical(10)"}, cfg, accelerator="cpu", progress=False,
    )  # fmt: skip
    if quality["digit"].poor:
        raise SystemExit(f"the digit classifier is poor ({quality['digit'].reason}); use more --num-samples")
    return model


def digit_accuracy(classifier: AttributePredictor, images: torch.Tensor, target: torch.Tensor) -> float:
    with torch.no_grad():
        read = classifier.to(images.device)(images)["digit"].argmax(1)
    return float((read == target.argmax(1)).float().mean())


def counterfactual_fn(mech: Any):
    """(batch, do) -> counterfactual batch: intensity follows the true SCM under do(thickness)."""

    @torch.no_grad()
    def cf(batch: dict[str, torch.Tensor], do: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(batch)
        out.update(do)
        if "thickness" in do and "intensity" not in do:
            t = do["thickness"][:, 0].cpu().numpy()
            i = mm.intensity_mechanism(t, batch["_u_intensity"][:, 0].cpu().numpy())
            out["intensity"] = torch.tensor(i, dtype=torch.float32, device=do["thickness"].device)[:, None]
        pa = {p: batch[p] for p in PARENTS}
        out["image"] = mech.predict(mech.abduct(batch["image"], pa), {p: out[p] for p in PARENTS})
        return out

    return cf


def draw_values(values: torch.Tensor, node: str, seed: int = 0) -> torch.Tensor:
    """Per sample, a value of another test unit falling in a different one of 9 bins over the scaled range."""
    lo, hi = SCALED[node]
    scaled = (2 * (values[:, 0] - lo) / (hi - lo) - 1).clamp(-1, 1)
    bins = ((scaled + 1) / 2 * 9).long().clamp(max=8)
    gen = torch.Generator().manual_seed(seed)
    out = values.clone()
    for k in range(len(values)):
        choices = torch.nonzero(bins != bins[k]).flatten()
        out[k] = values[choices[torch.randint(len(choices), (1,), generator=gen)]]
    return out


def measure(images: torch.Tensor) -> dict[str, np.ndarray]:
    return mm.measure_batch(images.cpu().numpy(), "signed", features=("thickness", "intensity"))


@torch.no_grad()
def evaluate(
    mech: Any, test: dict[str, torch.Tensor], graph: CausalGraph, classifier: AttributePredictor
) -> dict[str, Any]:
    cf = counterfactual_fn(mech)
    res: dict[str, Any] = {"factual_digit_acc": digit_accuracy(classifier, test["image"], test["digit"])}
    gen = torch.Generator().manual_seed(2)
    shift = torch.randint(1, 10, (len(test["digit"]),), generator=gen).to(test["digit"].device)
    new_digit = torch.nn.functional.one_hot((test["digit"].argmax(1) + shift) % 10, 10).float()
    res["do_digit"] = {"digit_acc": digit_accuracy(classifier, cf(test, {"digit": new_digit})["image"], new_digit)}
    pa = {p: test[p] for p in PARENTS}
    factual_m = measure(test["image"])
    for node in ("thickness", "intensity"):
        do = {node: draw_values(test[node], node)}
        out = cf(test, do)
        m = measure(out["image"])
        t_target = out["thickness"][:, 0].cpu().numpy()
        i_target = out["intensity"][:, 0].cpu().numpy()
        res[f"do_{node}"] = {
            "thickness_mae": float(np.nanmean(np.abs(m["thickness"] - t_target))),
            "intensity_mae": float(np.nanmean(np.abs(m["intensity"] - i_target))),
            "factual_thickness_mae": float(np.nanmean(np.abs(factual_m["thickness"] - t_target))),
            "closer_thickness": float(
                np.mean(np.abs(m["thickness"] - t_target) < np.abs(factual_m["thickness"] - t_target))
            ),
            "digit_acc": digit_accuracy(classifier, out["image"], test["digit"]),
        }
    keep = getattr(mech, "keep_residual", None)
    for residual in [True, False] if keep is not None else [None]:
        if keep is not None:
            mech.keep_residual = residual
        comp = repeat(cf, test, lambda b: null_intervention(graph, b), cycles=[1, 10])
        d1, d10 = image_l1(comp[1]["image"], test["image"]), image_l1(comp[10]["image"], test["image"])
        do = {"thickness": draw_values(test["thickness"], "thickness", seed=1)}
        rev = round_trips(cf, test, do, cycles=[1])
        dr = image_l1(rev[1]["image"], test["image"])
        tag = "_residual" if residual else "_no_residual"
        res[f"composition{tag}"] = {
            "l1_1": float(d1.mean()), "l1_1_std": float(d1.std()),
            "l1_10": float(d10.mean()), "l1_10_std": float(d10.std()),
        }  # fmt: skip
        res[f"reversibility{tag}"] = {"l1_1": float(dr.mean()), "l1_1_std": float(dr.std())}
    if keep is not None:
        mech.keep_residual = False
    recon = mech.predict(mech.abduct(test["image"], pa), pa)
    res["recon_mae_no_residual"] = float((recon - test["image"]).abs().mean())
    if keep is not None:
        mech.keep_residual = keep
    return res


@torch.no_grad()
def counterfactual_speed(mech: Any, test: dict[str, torch.Tensor], batch_size: int = 256) -> float:
    idx = torch.arange(batch_size, device=test["image"].device) % len(test["image"])
    x, pa = test["image"][idx], {p: test[p][idx] for p in PARENTS}
    cf_pa = {**pa, "thickness": pa["thickness"].flip(0)}
    mech.predict(mech.abduct(x[:8], {p: v[:8] for p, v in pa.items()}), {p: v[:8] for p, v in cf_pa.items()})
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    mech.predict(mech.abduct(x, pa), cf_pa)
    sync()
    return batch_size / (time.perf_counter() - start)


def steps_sweep(mech: Any, test: dict[str, torch.Tensor], steps: list[int], batch_size: int) -> dict[str, float]:
    """Counterfactuals/s at each step count (inversion and sampling both use it); restores the config's count."""
    own = mech.num_inference_steps
    rates = {}
    try:
        for s in steps:
            mech.num_inference_steps = int(s)
            rates[str(s)] = counterfactual_speed(mech, test, batch_size)
    finally:
        mech.num_inference_steps = own
    return rates


def run_single(args: argparse.Namespace, family: str, config_name: str) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    graph = CausalGraph.from_yaml(ROOT / "configs" / "graph" / "morphomnist.yaml")
    train_data = load_split(args.data_root, "train", args.num_samples, device)
    test = load_split(args.data_root, "test", args.num_samples, device)
    mech = build(family, config_name, graph).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out: dict[str, Any] = {"family": family, "config": config_name, "device": str(device)}
    out["parameters"] = sum(p.numel() for p in mech.parameters())
    out.update(train(mech, train_data, args.train_seconds))
    out["counterfactuals_per_s"] = counterfactual_speed(mech, test)
    if hasattr(mech, "num_inference_steps"):
        out["counterfactuals_per_s_by_steps"] = steps_sweep(mech, test, args.steps_sweep, args.sweep_batch)
    out.update(evaluate(mech, test, graph, digit_classifier(args.data_root, args.num_samples)))
    out["test_images"] = len(test["image"])
    if device.type == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| family | config | train img/s | CF/s | peak MB | recon MAE (no res.) | do(t): thickness MAE "
        "| do(t): intensity MAE | do(t): closer | do(i): intensity MAE | compo. L1 1 / 10 (res.) "
        "| compo. L1 1 / 10 (no res.) | revers. L1 (res.) | revers. L1 (no res.) | do(d): digit acc "
        "| do(t): digit kept | factual digit acc |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        t, i = r["do_thickness"], r["do_intensity"]
        cr, cn = r.get("composition_residual", {}), r.get("composition_no_residual", {})
        rv, rn = r.get("reversibility_residual", {}), r.get("reversibility_no_residual", {})
        d = r.get("do_digit", {})
        lines.append(
            f"| {r['family']} | {r['config']} | {r['train_images_per_s']:.0f} | {r['counterfactuals_per_s']:.0f} "
            f"| {r['peak_memory_mb']:.0f} | {r.get('recon_mae_no_residual', float('nan')):.3f} "
            f"| {t['thickness_mae']:.2f} (factual {t['factual_thickness_mae']:.2f}) | {t['intensity_mae']:.1f} "
            f"| {t['closer_thickness']:.2f} | {i['intensity_mae']:.1f} "
            f"| {cr.get('l1_1', float('nan')):.2f} / {cr.get('l1_10', float('nan')):.2f} "
            f"| {cn.get('l1_1', float('nan')):.2f} / {cn.get('l1_10', float('nan')):.2f} "
            f"| {rv.get('l1_1', float('nan')):.2f} | {rn.get('l1_1', float('nan')):.2f} "
            f"| {d.get('digit_acc', float('nan')):.2f} | {t.get('digit_acc', float('nan')):.2f} "
            f"| {r.get('factual_digit_acc', float('nan')):.2f} |"
        )
    sweeps = [r for r in rows if r.get("counterfactuals_per_s_by_steps")]
    if sweeps:
        lines += ["", "| family | config | device | steps | counterfactuals/s |", "|---|---|---|---|---|"]
        for r in sweeps:
            for s, rate in r["counterfactuals_per_s_by_steps"].items():
                lines.append(f"| {r['family']} | {r['config']} | {r['device']} | {s} | {rate:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["vae", "hvae"])
    parser.add_argument("--configs", nargs="+", default=None, help="config names (default: the family names)")
    parser.add_argument("--train-seconds", type=float, default=240.0)
    parser.add_argument("--num-samples", type=int, default=1500)
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps-sweep", nargs="*", type=int, default=[10, 25, 50, 100])
    parser.add_argument("--sweep-batch", type=int, default=64)
    parser.add_argument("--single", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "image_mechanisms.json"))
    args = parser.parse_args()
    if args.single:
        print(json.dumps(run_single(args, *args.single)))
        return
    configs = args.configs or args.families
    if len(configs) != len(args.families):
        raise SystemExit("--configs needs one name per family")
    for f in args.families:
        if f not in MECHANISMS:
            raise SystemExit(f"unknown family {f!r}; registered: {sorted(MECHANISMS)}")
    # materialise the dataset and the digit classifier once before the subprocesses read them
    MorphoMNIST(root=args.data_root, split="train", num_samples=args.num_samples)
    digit_classifier(args.data_root, args.num_samples)
    rows = []
    for family, config_name in zip(args.families, configs):
        cmd = [sys.executable, __file__, "--single", family, config_name, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"{family} failed:\n{proc.stderr[-4000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(table(rows[-1:]), flush=True)
    print(table(rows))
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "train_seconds": args.train_seconds,
        "num_samples": args.num_samples,
        "threads": args.threads,
        "device": args.device,
        "steps_sweep": args.steps_sweep,
        "sweep_batch": args.sweep_batch,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
