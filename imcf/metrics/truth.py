"""Ground truth: on embedded datasets the true counterfactual is known, so the error can be measured directly.

Images: pixel MAE (0..255), PSNR (dB, on 0..255, capped at `PSNR_CAP` for identical images) and SSIM.
Attributes: absolute error (continuous) or class mismatch (binary / categorical).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from imcf.graph import NodeKind
from imcf.metrics.base import CounterfactualStep, Metric, dataset_name
from imcf.metrics.composition import image_l1, node_distance, to_pixels
from imcf.registry import METRICS

#: PSNR of identical images is infinite; it is reported as this many dB
PSNR_CAP = 100.0


def pixel_mae(a: Tensor, b: Tensor) -> Tensor:
    """Per-image mean absolute error (B,) on the 0..255 scale."""
    return image_l1(a, b)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image peak signal-to-noise ratio (B,) in dB on the 0..255 scale, at most `PSNR_CAP`."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = (to_pixels(a) - to_pixels(b)).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(255.0**2 / mse.clamp(min=1e-30))).clamp(max=PSNR_CAP)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-image structural similarity (B,) of images in [-1, 1] (Gaussian window, 11 px or the image size)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    side = min(a.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    return structural_similarity_index_measure(
        a.float().clamp(-1, 1), b.float().clamp(-1, 1), data_range=2.0, kernel_size=kernel, reduction="none"
    ).reshape(-1)


def truth_scores(kind: NodeKind, model: Tensor, true: Tensor) -> dict[str, Tensor]:
    """Per-sample errors of one node against its true counterfactual: image {mae, psnr, ssim}, else {error}."""
    if tuple(model.shape) != tuple(true.shape):
        raise ValueError(f"model and true counterfactual shapes differ: {tuple(model.shape)} vs {tuple(true.shape)}")
    true = true.to(model.device)
    if kind.is_image:
        return {"mae": pixel_mae(model, true), "psnr": psnr(model, true), "ssim": ssim(model, true)}
    return {"error": node_distance(kind, model, true)}


@METRICS.register("truth")
class Truth(Metric):
    """Error of every node of the counterfactual against the dataset's true counterfactual (embedded data); the
    true images are shared as `step.shared["true"]` for the grid."""

    def __init__(self, setting: Any) -> None:
        super().__init__(setting)
        self.missing: set[str] = set()

    @classmethod
    def unsupported(cls, graph: Any, dataset: Any) -> str:
        return (
            "" if dataset.has_ground_truth else f"dataset {dataset_name(dataset)!r} has no ground-truth counterfactuals"
        )

    def update(self, step: CounterfactualStep) -> int:
        true = self.setting.dataset.true_counterfactual(step.index, {step.target: step.value.cpu()})
        if true is None:
            self.missing.add(step.target)
            return step.size
        for v in self.setting.graph.nodes:
            for name, s in truth_scores(self.setting.graph.kinds[v], step.cf[v], true[v].to(step.cf[v].device)).items():
                self.add(f"truth/{step.row}/{v}:{name}", s)
        step.shared["true"] = true
        return step.size

    def notes(self) -> list[str]:
        return [
            f"truth: the dataset has no true counterfactual under do({t}); that row is left out"
            for t in sorted(self.missing)
        ]
