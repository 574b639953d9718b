"""Reference family: x = w . parents + b + sigma * u with u ~ N(0, 1). Exact abduction, closed-form tests."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from imcf.graph import NodeKind
from imcf.mechanisms.base import Mechanism, check_flag
from imcf.registry import MECHANISMS


@MECHANISMS.register("linear_gaussian")
class LinearGaussian(Mechanism):
    """Linear-Gaussian mechanism for a continuous node; parents enter flattened (one-hot for categorical).

    `weights`, `bias` and `sigma` set the parameters (e.g. to a known SCM); `learnable=False` freezes them.
    """

    abduction_assumption = (
        "exact invertible mechanism: additive Gaussian noise, u = x - f(pa) recovered exactly; the counterfactual"
        " holds if the true mechanism is additive-noise"
    )

    exact_abduction = True

    def __init__(
        self,
        node: str,
        kind: NodeKind,
        parent_kinds: Mapping[str, NodeKind],
        weights: Mapping[str, float | list[float]] | None = None,
        bias: float = 0.0,
        sigma: float = 1.0,
        learnable: bool = True,
    ) -> None:
        super().__init__(node, kind, parent_kinds)
        if kind.name != "continuous":
            raise ValueError(f"linear_gaussian needs a continuous node; {node!r} is {kind}")
        if sigma <= 0:
            raise ValueError(f"linear_gaussian {node!r}: sigma must be > 0, got {sigma}")
        check_flag("linear_gaussian", node, "learnable", learnable)
        w = torch.zeros(self.parent_dim)
        if weights:
            unknown = set(weights) - set(self.parents)
            if unknown:
                raise KeyError(f"linear_gaussian {node!r}: weights for non-parents {sorted(unknown)}")
            start = 0
            for p, k in self.parent_kinds.items():
                if p in weights:
                    w[start : start + k.dim] = torch.as_tensor(weights[p], dtype=torch.float32)
                start += k.dim
        self.weight = nn.Parameter(w, requires_grad=learnable)
        self.bias = nn.Parameter(torch.tensor(float(bias)), requires_grad=learnable)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)), requires_grad=learnable)

    def mean(self, parents: Mapping[str, Tensor], batch_size: int = 0) -> Tensor:
        """E[x | parents] as (B, 1)."""
        pa = self.parent_vector(parents, batch_size)
        return (pa @ self.weight + self.bias).unsqueeze(1)

    def abduct(self, x: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        return (x - self.mean(parents, x.shape[0])) / self.log_sigma.exp()

    def predict(self, noise: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        return self.mean(parents, noise.shape[0]) + self.log_sigma.exp() * noise

    def sample_noise(self, n: int) -> Tensor:
        return torch.randn(n, 1, device=self.device)

    def log_prob(self, x: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        """log N(x; mean, sigma^2) per sample, shape (B,)."""
        z = self.abduct(x, parents)
        return (-0.5 * z**2 - self.log_sigma - 0.5 * math.log(2 * math.pi)).sum(dim=1)

    def loss(self, x: Tensor, parents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        nll = -self.log_prob(x, parents).mean()
        return {"loss": nll, "nll": nll.detach(), "sigma": self.log_sigma.exp().detach()}
