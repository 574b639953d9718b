"""Effectiveness: does the counterfactual image show the attribute it should?

Compares what a reader (an anti-causal predictor, or a direct measurement) sees in the counterfactual with
the value the counterfactual should have: the intervened value, or the SCM's counterfactual value for a
descendant. Continuous attributes: absolute error in original units. Binary / categorical: accuracy and F1.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

from imcf.graph import NodeKind
from imcf.metrics.base import CounterfactualStep, Metric, Plot, Result, no_targets
from imcf.registry import METRICS
from imcf.scores import absolute_error, correct, f1_score, labels, mean_and_std


def effectiveness(kind: NodeKind, read: Tensor, should: Tensor) -> dict[str, Tensor]:
    """Per-sample scores of one attribute: {"mae"} for continuous, {"acc"} for binary / categorical.

    `read` is what the predictor reads off the counterfactual (value, probability or class probabilities),
    `should` the value the counterfactual should have, in batch format. F1 needs the whole set: see `f1_score`.
    """
    if kind.name == "continuous":
        return {"mae": absolute_error(read, should)}
    if kind.name in ("binary", "categorical"):
        return {"acc": correct(labels(kind, read), labels(kind, should))}
    raise ValueError(f"effectiveness is defined for attributes, not {kind}")


@METRICS.register("effectiveness")
class Effectiveness(Metric):
    """What the anti-causal predictors read off each counterfactual image against what it should show: per
    attribute MAE (continuous) or accuracy and F1 (binary / categorical); plots intended vs read per target."""

    def __init__(self, setting: Any) -> None:
        super().__init__(setting)
        self.labels: dict[str, list[tuple[Tensor, Tensor]]] = defaultdict(list)
        self.plot_data: dict[tuple[str, str], list[tuple[Tensor, Tensor]]] = defaultdict(list)

    @classmethod
    def requires(cls, cfg: Any) -> set[str]:
        return {"predictors"}

    @classmethod
    def unsupported(cls, graph: Any, dataset: Any) -> str:
        return no_targets(graph)

    def update(self, step: CounterfactualStep) -> int:
        graph, cf, row = self.setting.graph, step.cf, step.row
        kind = graph.kinds[step.target]
        for m, model in self.setting.models.predictors.items():
            read = model(cf[m], cf)
            for a in model.kinds:
                for name, s in effectiveness(graph.kinds[a], read[a], cf[a]).items():
                    self.add(f"effectiveness/{row}/{a}:{name}", s)
                if graph.kinds[a].name != "continuous":
                    lab = (labels(graph.kinds[a], read[a]).cpu(), labels(graph.kinds[a], cf[a]).cpu())
                    self.labels[f"effectiveness/{row}/{a}:f1"].append(lab)
            if step.target in model.kinds:
                t = step.target
                intended = cf[t] if kind.name == "continuous" else labels(kind, cf[t])[:, None]
                got = read[t] if kind.name == "continuous" else labels(kind, read[t])[:, None]
                self.plot_data[(m, t)].append((intended.cpu(), got.cpu()))
        return step.size

    def compute(self) -> dict[str, Result]:
        results = super().compute()
        for key, parts in self.labels.items():
            pred, true = torch.cat([p for p, _ in parts]), torch.cat([q for _, q in parts])
            k = self.setting.graph.kinds[key.rsplit("/", 1)[1].split(":")[0]]
            f1 = f1_score(pred, true, 2 if k.name == "binary" else int(k.num_classes))
            results[key] = {"mean": f1, "std": None, "n": int(pred.numel())}
        return results

    def plots(self) -> list[Plot]:
        out = []
        for (m, t), parts in self.plot_data.items():
            intended, got = torch.cat([p for p, _ in parts])[:5000], torch.cat([q for _, q in parts])[:5000]
            discrete = self.setting.graph.kinds[t].name != "continuous"
            out.append(Plot(f"effectiveness_{m}_{t}", f"do({t}): {t} read off {m}", intended, got, discrete))
        return out


__all__ = ["Effectiveness", "absolute_error", "correct", "effectiveness", "f1_score", "labels", "mean_and_std"]
