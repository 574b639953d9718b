"""How the protocol draws intervention values (binary: the other class; categorical: another class; continuous:
a value of the evaluated samples, from another of the benchmark's bins or from all of them) and groups values
into bins / classes (minimality's reference groups)."""

from __future__ import annotations

import torch
from torch import Tensor

from imcf.graph import NodeKind
from imcf.metrics.base import EvaluationError
from imcf.scores import labels


def bin_edges(pool: Tensor, bins: int) -> Tensor:
    """Inner edges (bins - 1,) of `bins` equal bins over the range of `pool` (the benchmark's 9 bins over the
    min-max scaled range [-1, 1] are the same bins)."""
    lo, hi = pool.min().item(), pool.max().item()
    return torch.linspace(lo, hi, bins + 1)[1:-1]


def groups(kind: NodeKind, value: Tensor, edges: Tensor | None) -> Tensor:
    """Group label (B,) of a batch value: its bin for continuous nodes, its class otherwise."""
    if kind.name == "continuous":
        return torch.bucketize(value.reshape(-1).float().cpu(), edges, right=True)
    return labels(kind, value.cpu())


def draw_intervention(
    kind: NodeKind,
    factual: Tensor,
    pool: Tensor,
    gen: torch.Generator,
    edges: Tensor | None = None,
) -> Tensor:
    """Intervention values for one node, seeded by `gen`.

    Binary: the other class. Categorical: another class, uniformly. Continuous: a value drawn uniformly from
    `pool` (the node's values in the evaluation split); with `edges`, only from values in another bin than the
    factual's (the benchmark), otherwise from all of them (the marginal).
    """
    b = factual.shape[0]
    if kind.name == "binary":
        return 1.0 - factual
    if kind.name == "categorical":
        k = int(kind.num_classes)
        shift = torch.randint(1, k, (b,), generator=gen)
        return torch.nn.functional.one_hot((factual.argmax(1).cpu() + shift) % k, k).float().to(factual)
    if edges is None:
        return pool[torch.randint(0, pool.shape[0], (b,), generator=gen)].to(factual)
    pool_bins = torch.bucketize(pool.reshape(-1), edges, right=True)
    order = torch.argsort(pool_bins, stable=True)
    counts = torch.bincount(pool_bins, minlength=len(edges) + 1)
    starts = torch.cumsum(counts, 0) - counts
    fb = torch.bucketize(factual.reshape(-1).float().cpu(), edges, right=True)
    eligible = pool.shape[0] - counts[fb]
    if (eligible == 0).any():
        raise EvaluationError("every value of the pool lies in one bin; cannot draw a value from another bin")
    r = (torch.rand(b, generator=gen) * eligible).long().clamp(max=eligible - 1)
    idx = r + (r >= starts[fb]).long() * counts[fb]  # skip the factual's own bin
    return pool[order[idx]].to(factual)
