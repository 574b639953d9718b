"""Realism: FID and KID between real images and counterfactuals, computed by torchmetrics on features.

The features come from a domain feature extractor trained offline (by default the anti-causal predictors'
penultimate layer, `imcf.evaluators.predictors`), or from Inception-v3 when its weights are present locally
(`imcf.evaluators.features.InceptionFeatures`). `fid` and `kid` are pure functions of two feature batches.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from imcf.data.base import stack_batch
from imcf.data.datamodule import build_dataset
from imcf.metrics.base import CounterfactualStep, FactualStep, Metric, Result, no_image
from imcf.registry import METRICS


class _Precomputed(nn.Module):
    """Lets torchmetrics' FID / KID consume feature vectors that were computed elsewhere."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def _check(real: Tensor, fake: Tensor) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(real.shape[0], fake.shape[0]) < 2:
        raise ValueError(f"FID / KID need at least 2 samples per set, got {real.shape[0]} and {fake.shape[0]}")


def fid(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (torchmetrics, float64)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check(real, fake)
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), normalize=True).set_dtype(torch.float64)
    metric.update(real.double().cpu(), real=True)
    metric.update(fake.double().cpu(), real=False)
    return float(metric.compute())


def kid(real: Tensor, fake: Tensor, subsets: int = 20, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (mean, std over `subsets` random subsets) of two (N, D) feature sets.

    `subset_size` is clipped to the smaller set; the subsets are drawn from `seed`.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    _check(real, fake)
    size = min(subset_size, real.shape[0], fake.shape[0])
    metric = KernelInceptionDistance(
        feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size, normalize=True
    )
    metric.update(real.double().cpu(), real=True)
    metric.update(fake.double().cpu(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


@METRICS.register("realism")
class Realism(Metric):
    """FID and KID of the factual images, the reconstruction (the first null cycle, when composition runs),
    every intervention's counterfactuals and one random intervention per batch against the reference split."""

    set_level = True

    def __init__(self, setting: Any) -> None:
        super().__init__(setting)
        self.feats: dict[str, list[Tensor]] = defaultdict(list)
        self.reference_size = 0

    @classmethod
    def requires(cls, cfg: Any) -> set[str]:
        return {"features", "predictors"} if cfg.realism.features == "predictors" else {"features"}

    @classmethod
    def unsupported(cls, graph: Any, dataset: Any) -> str:
        return no_image(graph)

    def factual(self, step: FactualStep) -> int:
        for m, f in self.setting.models.extractors.items():
            self.feats[f"{m}|factual"].append(f(step.factual[m]).cpu())
            outs = step.shared.get("null")
            if outs:  # the realism of a reconstruction: what counterfactuals compare to
                self.feats[f"{m}|null x{min(outs)}"].append(f(outs[min(outs)][m]).cpu())
        return 0

    def update(self, step: CounterfactualStep) -> int:
        for m, f in self.setting.models.extractors.items():
            fc = f(step.cf[m]).cpu()
            self.feats[f"{m}|{step.row}"].append(fc)
            if step.random:
                self.feats[f"{m}|random do"].append(fc)
        return step.size

    def compute(self) -> dict[str, Result]:
        s, results = self.setting, {}
        if s.num_samples < 2:
            return results
        cfg = s.cfg
        real_split = build_dataset(s.dataset_name, s.data_root, cfg.realism.reference_split, **s.options)
        limit = cfg.realism.max_reference
        self.reference_size = n = len(real_split) if limit is None else min(len(real_split), int(limit))
        loader = DataLoader(Subset(real_split, range(n)), batch_size=int(cfg.batch_size), collate_fn=stack_batch)
        real_feats: dict[str, list[Tensor]] = defaultdict(list)
        desc = f"realism reference ({cfg.realism.reference_split})"
        for rb in tqdm(loader, desc=desc, disable=not cfg.progress):
            for m, f in s.models.extractors.items():
                real_feats[m].append(f(rb[m].to(s.device)).cpu())
        for m in s.models.extractors:
            real = torch.cat(real_feats[m])
            nulls = sorted({k.split("|", 1)[1] for k in self.feats if k.startswith(f"{m}|null x")})
            for row in ["factual", *nulls, *[f"do({t})" for t in s.intervened], "random do"]:
                fake = torch.cat(self.feats[f"{m}|{row}"]) if self.feats.get(f"{m}|{row}") else torch.zeros(0)
                if fake.shape[0] < 2:
                    continue
                results[f"realism/{row}/{m}:fid"] = {"mean": fid(real, fake), "std": None, "n": int(fake.shape[0])}
                subsets, size = int(cfg.realism.kid_subsets), int(cfg.realism.kid_subset_size)
                mean, std = kid(real, fake, subsets, size, int(cfg.seed))
                results[f"realism/{row}/{m}:kid"] = {"mean": mean, "std": std, "n": int(fake.shape[0])}
        return results

    def notes(self) -> list[str]:
        if not self.reference_size:
            return []
        cfg = self.setting.cfg.realism
        return [
            f"realism: {cfg.features} features; {self.reference_size} real images from the {cfg.reference_split} split"
        ]
