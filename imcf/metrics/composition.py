"""Composition: applying the null intervention should give the factual back, however often it is repeated.

Distances are per sample: L1 on the 0..255 pixel scale (computed in float, so no uint8 wrap-around), the mean
absolute difference of a feature extractor's embeddings (the predictors' penultimate features), and LPIPS when
its weights are available locally. `null_intervention` and `repeat` build the cycles from any counterfactual
function, so this module never needs a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from imcf.graph import CausalGraph, NodeKind
from imcf.metrics.base import FactualStep, Metric
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


def image_l1(a: Tensor, b: Tensor) -> Tensor:
    """Per-image mean absolute difference (B,) on the 0..255 scale."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (to_pixels(a) - to_pixels(b)).abs().flatten(1).mean(1)


def feature_l1(fa: Tensor, fb: Tensor) -> Tensor:
    """Per-sample mean absolute difference (B,) of two (B, D) feature batches."""
    if fa.shape != fb.shape:
        raise ValueError(f"feature shapes differ: {tuple(fa.shape)} vs {tuple(fb.shape)}")
    return (fa.float() - fb.float()).abs().flatten(1).mean(1)


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


def distances(metric: Metric, prefix: str, out: Mapping[str, Tensor], factual: Mapping[str, Tensor]) -> None:
    """Collect every node's distance between `out` and the factual under `prefix` (`<metric>/<row>`): image L1,
    the predictors' feature L1 and LPIPS where those readers exist, attribute errors."""
    graph, models = metric.setting.graph, metric.setting.models
    for v in graph.nodes:
        kind = graph.kinds[v]
        if not kind.is_image:
            metric.add(f"{prefix}/{v}:error", node_distance(kind, out[v], factual[v]))
            continue
        metric.add(f"{prefix}/{v}:l1", node_distance(kind, out[v], factual[v]))
        if v in models.predictors:
            f = models.predictors[v].features
            metric.add(f"{prefix}/{v}:feature_l1", feature_l1(f(out[v]), f(factual[v])))
        if models.lpips is not None:
            metric.add(f"{prefix}/{v}:lpips", models.lpips(out[v], factual[v]))


def distance_readers(cfg: Any) -> set[str]:
    """The evaluator models `distances` reads: the predictors' features, and LPIPS when `cfg.lpips`."""
    return {"predictors", "lpips"} if cfg.lpips else {"predictors"}


@METRICS.register("composition")
class Composition(Metric):
    """The null intervention applied 1, ..., k times: distance of the k-th output to the factual per cycle in
    `cycles` (its outputs are shared as `step.shared["null"]`: realism scores the reconstruction)."""

    @classmethod
    def requires(cls, cfg: Any) -> set[str]:
        return distance_readers(cfg)

    def factual(self, step: FactualStep) -> int:
        s = self.setting
        outs = repeat(s.scm.counterfactual, step.factual, lambda x: null_intervention(s.graph, x), s.cycles)
        for k, out in outs.items():
            distances(self, f"composition/null x{k}", out, step.factual)
        step.shared["null"] = outs
        return step.size * max(s.cycles, default=0)
