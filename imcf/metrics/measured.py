"""Measured effectiveness: the dataset measures its own counterfactual images (`CausalDataset.measure`, e.g.
Morpho-MNIST's morphometrics: thickness and intensity without any trained reader) and the measurement is
compared with the value the counterfactual should have."""

from __future__ import annotations

from typing import Any

from imcf.metrics.base import CounterfactualStep, Metric, dataset_name, no_targets
from imcf.registry import METRICS


@METRICS.register("measured")
class Measured(Metric):
    """Absolute error of each measured continuous attribute of at most `measured_max_samples` counterfactuals per
    intervention."""

    def __init__(self, setting: Any) -> None:
        super().__init__(setting)
        limit = int(setting.cfg.measured_max_samples or setting.num_samples)
        self.left = {t: limit for t in setting.intervened}

    @classmethod
    def unsupported(cls, graph: Any, dataset: Any) -> str:
        missing = f"dataset {dataset_name(dataset)!r} has no direct attribute measurements"
        return no_targets(graph) or ("" if dataset.has_measurements else missing)

    def update(self, step: CounterfactualStep) -> int:
        k = min(step.size, self.left[step.target])
        if k <= 0:
            return 0
        self.left[step.target] -= k
        kinds, cf = self.setting.graph.kinds, step.cf
        for m in self.setting.images:
            for a, vals in self.setting.dataset.measure(cf[m][:k]).items():
                if a in kinds and kinds[a].name == "continuous":
                    self.add(f"measured/{step.row}/{a}:mae", (vals.reshape(-1).to(cf[a]) - cf[a][:k].reshape(-1)).abs())
        return k

    def notes(self) -> list[str]:
        limit = self.setting.cfg.measured_max_samples
        return [f"measured: morphometrics on at most {limit} counterfactuals per intervention"]
