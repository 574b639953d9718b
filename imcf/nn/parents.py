"""Turn a node's parents into a normalised feature vector that networks can condition on."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from imcf.graph import NodeKind


class ParentEncoder(nn.Module):
    """Parents -> (B, D) features: continuous standardised, binary mapped to {-1, 1}, categorical one-hot.

    Continuous parents use a fixed range when given (`ranges={name: (lo, hi)}` -> [-1, 1]), otherwise
    running statistics (Welford) accumulated in training mode and frozen in eval mode, so a counterfactual
    parent value is normalised exactly like a factual one.
    """

    def __init__(
        self,
        parent_kinds: Mapping[str, NodeKind],
        ranges: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        super().__init__()
        self.parent_kinds = dict(parent_kinds)
        ranges = dict(ranges or {})
        unknown = set(ranges) - set(self.parent_kinds)
        if unknown:
            raise KeyError(f"ranges given for non-parents {sorted(unknown)}")
        self.continuous = [p for p, k in self.parent_kinds.items() if k.name == "continuous"]
        lo = torch.tensor([float(ranges[p][0]) if p in ranges else 0.0 for p in self.continuous])
        hi = torch.tensor([float(ranges[p][1]) if p in ranges else 0.0 for p in self.continuous])
        fixed = torch.tensor([p in ranges for p in self.continuous], dtype=torch.bool)
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        self.register_buffer("fixed", fixed)
        n = len(self.continuous)
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("m2", torch.zeros(n))

    @property
    def dim(self) -> int:
        return sum(k.dim for k in self.parent_kinds.values())

    @torch.no_grad()
    def _update(self, x: Tensor) -> None:
        b = x.shape[0]
        batch_mean = x.mean(0)
        delta = batch_mean - self.mean
        total = self.count + b
        self.mean += delta * b / total
        self.m2 += ((x - batch_mean) ** 2).sum(0) + delta**2 * self.count * b / total
        self.count.fill_(total)

    def _normalise_continuous(self, x: Tensor, update: bool = True) -> Tensor:
        if update and self.training and x.shape[0] > 1:
            self._update(x)
        std = (self.m2 / (self.count - 1).clamp(min=1)).clamp(min=1e-12).sqrt()
        std = torch.where(self.count > 1, std, torch.ones_like(std))
        running = (x - self.mean) / std
        scaled = 2 * (x - self.lo) / (self.hi - self.lo).clamp(min=1e-12) - 1
        return torch.where(self.fixed, scaled, running)

    def forward(self, parents: Mapping[str, Tensor], update: bool = True) -> Tensor:
        """Encode; `update=False` never touches the running statistics (abduction and prediction must not)."""
        missing = [p for p in self.parent_kinds if p not in parents]
        if missing:
            raise KeyError(f"missing parents {missing}; got {sorted(parents)}")
        cols, cont = [], []
        for p, k in self.parent_kinds.items():
            v = parents[p].reshape(parents[p].shape[0], -1).float()
            if k.name == "continuous":
                cont.append(v)
                cols.append(None)
            elif k.name == "binary":
                cols.append(2 * v - 1)
            else:
                cols.append(v)
        if cont:
            normed = self._normalise_continuous(torch.cat(cont, 1), update).split(1, dim=1)
            it = iter(normed)
            cols = [next(it) if c is None else c for c in cols]
        if not cols:
            raise ValueError("ParentEncoder has no parents")
        return torch.cat(cols, 1)
