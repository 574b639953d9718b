"""Binary and categorical attributes: logits from an MLP of the parents, Gumbel-max or threshold noise.

Two structural assumptions, chosen by `mode` (the observational likelihood is the same; the counterfactuals
differ, because discrete counterfactuals are not identified from data alone):

- `gumbel` (Gumbel-max SCM, Oberst & Sontag 2019): x = argmax_k(log p_k(pa) + g_k), g_k iid Gumbel(0, 1);
  the noise is the full Gumbel vector. Abduction samples g from its posterior given x with the truncated-
  Gumbel construction (Maddison et al. 2014), so predict(abduct(x, pa), pa) == x always.
- `threshold` (inverse-CDF SCM): u ~ U(0, 1) and class k is chosen when u falls in its interval of [0, 1); for
  a binary node x = 1[u < p(pa)] exactly. Abduction draws u uniformly from the interval consistent with x.

Abduction is random; pass a `torch.Generator` to `abduct` / `sample_noise`, or build with `seed=...`, for
reproducible draws (drawn on the CPU and moved, so they do not depend on the device).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imcf.graph import NodeKind
from imcf.mechanisms.base import Mechanism, check_parent_ranges, check_sizes
from imcf.nn.parents import ParentEncoder
from imcf.registry import MECHANISMS

MODES = ("gumbel", "threshold")
MODE_ASSUMPTIONS = {
    "gumbel": "Gumbel-max SCM (Oberst & Sontag 2019): counterfactual stability chooses the counterfactual",
    "threshold": "inverse-CDF threshold SCM: a monotone noise-to-class map chooses the counterfactual",
}
MIN_PROB = 1e-6  # threshold mode: every class keeps an interval at least this wide, so abduction never fails


def _gumbel(u: Tensor) -> Tensor:
    """Standard Gumbel variates from uniforms, with u kept inside (0, 1)."""
    tiny = torch.finfo(u.dtype).tiny
    return -torch.log(-torch.log(u.clamp(min=tiny, max=1 - torch.finfo(u.dtype).eps)))


@MECHANISMS.register("discrete")
class DiscreteMechanism(Mechanism):
    """Binary (B, 1) in {0, 1} or categorical (B, K) one-hot node; root nodes learn a logit vector.

    `mode`: `gumbel` or `threshold` (module docstring). `hidden` / `num_layers`: the MLP on the parents
    (num_layers=0 is logistic regression); `parent_ranges` fixes the scaling of continuous parents;
    `seed` makes abduction and noise draws reproducible when no generator is passed (a private CPU generator
    seeded with `seed` and the node name, so two nodes with the same config draw independent streams).
    """

    abduction_assumption = (
        "discrete counterfactuals are not identified by data: the Gumbel-max SCM (Oberst & Sontag 2019; "
        "mode=gumbel, counterfactual stability) or the inverse-CDF threshold SCM (mode=threshold, monotone in the"
        " noise) chooses one of the SCMs that fit the same observational distribution"
    )

    exact_abduction = True

    @classmethod
    def abduction_assumption_for(cls, config: Mapping[str, Any] | None = None) -> str:
        """The assumption of the configured `mode`, or of both when none is given."""
        mode = (config or {}).get("mode")
        return (
            f"{MODE_ASSUMPTIONS[mode]}; not identified by data alone"
            if mode in MODE_ASSUMPTIONS
            else super().abduction_assumption_for(config)
        )

    def __init__(
        self,
        node: str,
        kind: NodeKind,
        parent_kinds: Mapping[str, NodeKind],
        mode: str = "gumbel",
        hidden: int = 32,
        num_layers: int = 2,
        seed: int | None = None,
        parent_ranges: Mapping[str, list[float]] | None = None,
    ) -> None:
        super().__init__(node, kind, parent_kinds)
        if kind.name not in ("binary", "categorical"):
            raise ValueError(f"discrete mechanism needs a binary or categorical node; {node!r} is {kind}")
        if mode not in MODES:
            raise ValueError(f"discrete {node!r}: mode must be one of {MODES}, got {mode!r}")
        check_sizes("discrete", node, hidden=hidden)
        check_sizes("discrete", node, 0, num_layers=num_layers)
        ranges = check_parent_ranges("discrete", node, parent_kinds, parent_ranges)
        self.mode = mode
        self.binary = kind.name == "binary"
        self.num_classes = 2 if self.binary else int(kind.num_classes)
        out = 1 if self.binary else self.num_classes
        if parent_kinds:
            self.encoder = ParentEncoder(parent_kinds, ranges)
            dims = [self.encoder.dim] + [hidden] * num_layers
            layers: list[nn.Module] = []
            for a, b in zip(dims[:-1], dims[1:]):
                layers += [nn.Linear(a, b), nn.SiLU()]
            self.net = nn.Sequential(*layers, nn.Linear(dims[-1], out))
        else:
            self.encoder = None
            self.root_logits = nn.Parameter(torch.zeros(out))
        # the node name enters the seed, so nodes sharing a config still draw independent noise
        self.generator = (
            torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(node.encode())) % 2**63)
            if seed is not None
            else None
        )

    # ----- the distribution -----
    def logits(self, parents: Mapping[str, Tensor], batch_size: int = 0, update: bool = False) -> Tensor:
        """Normalised log-probabilities (B, K); a binary node's classes are (0, 1).

        Only the training loss passes `update=True` (the encoder's running statistics may move).
        """
        self.parent_vector(parents, batch_size)  # validates names and shapes
        if self.encoder is not None:
            raw = self.net(self.encoder(parents, update=update))
        else:
            raw = self.root_logits.expand(batch_size, -1)
        if self.binary:
            raw = torch.cat([torch.zeros_like(raw), raw], dim=1)
        return F.log_softmax(raw, dim=1)

    def probs(self, parents: Mapping[str, Tensor], batch_size: int = 0) -> Tensor:
        """Class probabilities (B, K); for a binary node column 1 is P(x = 1 | parents)."""
        return self.logits(parents, batch_size).exp()

    def log_prob(self, x: Tensor, parents: Mapping[str, Tensor], update: bool = False) -> Tensor:
        """log P(x | parents) per sample, shape (B,)."""
        idx = self._index(x)
        return self.logits(parents, x.shape[0], update).gather(1, idx[:, None]).squeeze(1)

    def loss(self, x: Tensor, parents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        nll = -self.log_prob(x, parents, update=self.training).mean()
        return {"loss": nll, "nll": nll.detach()}

    # ----- values <-> class indices -----
    def _index(self, x: Tensor) -> Tensor:
        expected = (1,) if self.binary else (self.num_classes,)
        if x.ndim != 2 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"discrete {self.node!r}: expected values of shape (B, {expected[0]}), got {tuple(x.shape)}"
            )
        if self.binary:
            if not torch.all((x == 0) | (x == 1)):
                raise ValueError(f"discrete {self.node!r}: binary values must be 0 or 1")
            return x[:, 0].long()
        if not torch.all(((x == 0) | (x == 1)) & (x.sum(1, keepdim=True) == 1)):
            raise ValueError(f"discrete {self.node!r}: categorical values must be one-hot rows")
        return x.argmax(1)

    def _value(self, idx: Tensor, dtype: torch.dtype) -> Tensor:
        if self.binary:
            return idx[:, None].to(dtype)
        return F.one_hot(idx, self.num_classes).to(dtype)

    # ----- noise -----
    def _uniform(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        generator = generator if generator is not None else self.generator
        dtype = self._device_anchor.dtype
        if generator is None:
            return torch.rand(shape, device=self.device, dtype=dtype)
        return torch.rand(shape, generator=generator, dtype=dtype).to(self.device)

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Prior noise: standard Gumbel (n, K) in gumbel mode, U(0, 1) (n, 1) in threshold mode."""
        if self.mode == "gumbel":
            return _gumbel(self._uniform((n, self.num_classes), generator))
        return self._uniform((n, 1), generator)

    def _intervals(self, logp: Tensor) -> tuple[Tensor, Tensor]:
        """Threshold mode: lower and upper ends (B, K) of each class's interval of [0, 1).

        Intervals run in class order, except that a binary node puts class 1 first so x = 1[u < p(pa)].
        """
        q = logp.exp()
        if self.binary:
            q = q.flip(1)
        q = q.clamp(min=MIN_PROB)
        upper = (q / q.sum(1, keepdim=True)).cumsum(1)
        upper = torch.cat([upper[:, :-1], torch.ones_like(upper[:, -1:])], dim=1)
        lower = torch.cat([torch.zeros_like(upper[:, :1]), upper[:, :-1]], dim=1)
        return lower, upper

    # ----- the contract -----
    def abduct(self, x: Tensor, parents: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """A draw from the noise posterior given x and its parents (module docstring)."""
        idx = self._index(x)
        logp = self.logits(parents, x.shape[0])
        if self.mode == "threshold":
            lower, upper = self._intervals(logp)
            slot = (1 - idx) if self.binary else idx
            lo, hi = lower.gather(1, slot[:, None]), upper.gather(1, slot[:, None])
            u = lo + (hi - lo) * self._uniform(tuple(lo.shape), generator)
            return torch.minimum(torch.maximum(u, lo), torch.nextafter(hi, torch.zeros_like(hi)))
        # Gumbel-max posterior: the maximum of logp + g is Gumbel(logsumexp logp = 0) and lands on class x;
        # the other classes are Gumbel(logp_k) truncated below that maximum.
        onehot = F.one_hot(idx, self.num_classes).bool()
        gumbels = _gumbel(self._uniform((logp.shape[0], self.num_classes + 1), generator))
        top, gumbels = gumbels[:, :1], gumbels[:, 1:]
        others = -torch.logaddexp(-top, -(logp + gumbels))
        g = torch.where(onehot, top, others) - logp
        # float rounding must never create a tie: keep every other class a relative 1e-4 below the top
        v = logp + g
        vmax = v.gather(1, idx[:, None])
        margin = 1e-4 * (1 + vmax.abs() + logp.abs())
        g = torch.where(~onehot & (v > vmax - margin), vmax - margin - logp, g)
        return g

    def predict(self, noise: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        """The class chosen by the noise under these parents, as a binary (B, 1) or one-hot (B, K) value."""
        width = self.num_classes if self.mode == "gumbel" else 1
        if noise.ndim != 2 or noise.shape[1] != width:
            raise ValueError(
                f"discrete {self.node!r} ({self.mode}): noise must be (B, {width}), got {tuple(noise.shape)}"
            )
        logp = self.logits(parents, noise.shape[0])
        if self.mode == "gumbel":
            idx = (logp + noise).argmax(1)
        else:
            lower, _ = self._intervals(logp)
            slot = (noise >= lower[:, 1:]).sum(1)
            idx = (1 - slot) if self.binary else slot
        return self._value(idx, logp.dtype)
