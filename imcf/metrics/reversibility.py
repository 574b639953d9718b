"""Reversibility: a counterfactual under do(a = a'), taken back under do(a = factual a), should be the factual.

The round trip is repeated `k` times (each output the next input); distances to the factual use the same
per-sample distances as composition (`imcf.metrics.composition`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from imcf.metrics.base import CounterfactualStep, Metric
from imcf.metrics.composition import Batch, CounterfactualFn, distance_readers, distances
from imcf.registry import METRICS


def undo(do: Mapping[str, Any], factual: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The intervention that sets every node of `do` back to its factual value."""
    return {n: factual[n] for n in do}


def round_trips(
    counterfactual: CounterfactualFn,
    factual: Mapping[str, Tensor],
    do: Mapping[str, Any],
    cycles: Iterable[int],
) -> dict[int, Batch]:
    """Outputs after k round trips do(a') then do(a) for each k in `cycles` (k = 0 is the factual itself)."""
    wanted = sorted(set(int(c) for c in cycles))
    back = undo(do, factual)
    out: dict[int, Batch] = {0: dict(factual)} if 0 in wanted else {}
    x: Batch = dict(factual)
    for k in range(1, max(wanted, default=0) + 1):
        x = counterfactual(counterfactual(x, do), back)
        if k in wanted:
            out[k] = x
    return out


@METRICS.register("reversibility")
class Reversibility(Metric):
    """do(a = a') then do(a = factual a), repeated: distance to the factual after each number of round trips in
    `cycles` (the outputs are shared as `step.shared["back"]` for the grid)."""

    @classmethod
    def requires(cls, cfg: Any) -> set[str]:
        return distance_readers(cfg)

    def update(self, step: CounterfactualStep) -> int:
        cycles = self.setting.cycles
        outs = round_trips(self.setting.scm.counterfactual, step.factual, {step.target: step.value}, cycles)
        for k, out in outs.items():
            distances(self, f"reversibility/{step.row} x{k}", out, step.factual)
        step.shared["back"] = outs
        return step.size * 2 * max(cycles, default=0)
