"""Composition: applying the null intervention should give the factual back, however often it is repeated.

Distances are per sample: L1 on the 0..255 pixel scale (computed in float, so no uint8 wrap-around), the mean
absolute difference of a feature extractor's embeddings (the predictors' penultimate features), and LPIPS when
its weights are available locally. `null_intervention` and `repeat` build the cycles from any counterfactual
function, so this module never needs a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from imcf.graph import CausalGraph, NodeKind
from imcf.registry import METRICS

Batch = dict[str, Tensor]
CounterfactualFn = Callable[[Mapping[str, Tensor], Mapping[str, Any]], Batch]


def to_pixels(image: Tensor) -> Tensor:
    """Images as float on the 0..255 scale: uint8 converted as is, floats taken to lie in [-1, 1]."""
    if image.dtype == torch.uint8:
        return image.float()
    if not torch.is_floating_point(image):
        raise TypeError(f"images must be uint8 or float in [-1, 1], got {image.dtype}")
    return (image.float() + 1.0) * 127.5


@METRICS.register("image_l1")
def image_l1(a: Tensor, b: Tensor) -> Tensor:
    """Per-image mean absolute difference (B,) on the 0..255 scale."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (to_pixels(a) - to_pixels(b)).abs().flatten(1).mean(1)


@METRICS.register("feature_l1")
def feature_l1(fa: Tensor, fb: Tensor) -> Tensor:
    """Per-sample mean absolute difference (B,) of two (B, D) feature batches."""
    if fa.shape != fb.shape:
        raise ValueError(f"feature shapes differ: {tuple(fa.shape)} vs {tuple(fb.shape)}")
    return (fa.float() - fb.float()).abs().flatten(1).mean(1)


@METRICS.register("node_distance")
def node_distance(kind: NodeKind, a: Tensor, b: Tensor) -> Tensor:
    """Per-sample distance for any node: image L1 (0..255), absolute error, or 0/1 class mismatch."""
    if kind.is_image:
        return image_l1(a, b)
    if kind.name == "categorical":
        return (a.argmax(1) != b.argmax(1)).float()
    if kind.name == "binary":
        return ((a.reshape(-1) >= 0.5) != (b.reshape(-1) >= 0.5)).float()
    return (a.float() - b.float()).abs().flatten(1).mean(1)


def null_intervention(graph: CausalGraph, factual: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """do(every root = its factual value): re-predicts every other node through its mechanism.

    (An empty do() would copy the factual and test nothing.)
    """
    return {n: factual[n] for n in graph.nodes if not graph.parents(n)}


def repeat(
    counterfactual: CounterfactualFn,
    factual: Mapping[str, Tensor],
    do: Callable[[Mapping[str, Tensor]], Mapping[str, Any]],
    cycles: Iterable[int],
) -> dict[int, Batch]:
    """Apply `counterfactual(x, do(x))` repeatedly (each output is the next input); outputs at `cycles`."""
    wanted = sorted(set(int(c) for c in cycles))
    out: dict[int, Batch] = {0: dict(factual)} if 0 in wanted else {}
    x: Batch = dict(factual)
    for k in range(1, max(wanted, default=0) + 1):
        x = counterfactual(x, do(x))
        if k in wanted:
            out[k] = x
    return out


def lpips_weights_available(net: str = "alex") -> bool:
    """Whether torchvision's backbone weights for LPIPS are already in the local torch hub cache."""
    names = {"alex": "alexnet-owt-", "vgg": "vgg16-", "squeeze": "squeezenet1_1-"}
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return folder.is_dir() and any(p.name.startswith(names[net]) for p in folder.iterdir())


class LPIPSDistance(nn.Module):
    """Per-sample LPIPS (torchmetrics) on images in [-1, 1]; grey images are repeated to 3 channels.

    Refuses to start unless the backbone weights are in the local cache (nothing is downloaded).
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if not lpips_weights_available(net):
            raise FileNotFoundError(
                f"LPIPS needs torchvision's {net} weights in {Path(torch.hub.get_dir()) / 'checkpoints'}; "
                "they are not there and nothing is downloaded at run time. Copy them there or set "
                "composition.lpips=false"
            )
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.lpips = LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="none")

    @torch.no_grad()
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        return self.lpips(a.clamp(-1, 1), b.clamp(-1, 1)).reshape(-1)
