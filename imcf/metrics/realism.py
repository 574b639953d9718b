"""Realism: FID and KID between real images and counterfactuals, computed by torchmetrics on features.

The features come from a domain feature extractor trained offline (by default the anti-causal predictors'
penultimate layer, `imcf.metrics.predictors`), or from Inception-v3 when its weights are present locally
(`inception_extractor`). `fid` and `kid` are pure functions of two feature batches.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from imcf.registry import METRICS

#: torch-fidelity's Inception-v3 weights (the FID reference network), looked up in the torch hub cache
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


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


@METRICS.register("fid")
def fid(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (torchmetrics, float64)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check(real, fake)
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), normalize=True).set_dtype(torch.float64)
    metric.update(real.double().cpu(), real=True)
    metric.update(fake.double().cpu(), real=False)
    return float(metric.compute())


@METRICS.register("kid")
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


def inception_weights_path(path: str | None = None) -> Path:
    """Where the Inception-v3 weights are expected: `path`, else the torch hub cache."""
    return Path(path) if path else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features (B, 2048) of images in [-1, 1] (grey repeated to RGB), from local weights."""

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        path = inception_weights_path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception features need the FID Inception-v3 weights at {path} and nothing is downloaded at "
                f"run time; copy {INCEPTION_WEIGHTS} there (or set realism.inception_weights=<file>), or use "
                "realism.features=predictors (the default domain features)"
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.net = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
            )
        except ModuleNotFoundError as e:  # torch-fidelity is an optional dependency
            raise ModuleNotFoundError(
                f"Inception features need torch-fidelity (pip install torch-fidelity): {e}"
            ) from None
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(pixels).reshape(images.shape[0], -1)
