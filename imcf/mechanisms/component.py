"""Shared confounder noise of a c-component: nodes joined by bidirected edges are abducted and trained jointly.

Two ways to represent the hidden confounder, both as extra inputs ("pseudo-parents") of the member mechanisms:

* `autoregressive` (exact; attribute-only components): members in topological order; member j also reads the
  exogenous noise of the members before it (`__u_<member>`). The joint likelihood factorises exactly by the
  chain rule, abduction is exact, and a counterfactual keeps every member's own noise — so the confounder's
  factual value, carried by the earlier members' noise, persists under interventions on them.
* `latent` (any families, images included; Modular-DCM style): one shared latent z ~ N(0, I) per component is an
  extra input (`__z_<unit>_<k>`) of every member; an amortised encoder q(z | members, their outside parents)
  gives the joint ELBO  sum_j loss_j(x_j | pa_j, z) + KL(q || p), and abduction takes the posterior mean of z.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from imcf.graph import CausalGraph, NodeKind
from imcf.nn.parents import ParentEncoder

MODES = ("auto", "autoregressive", "latent")
_CONT = NodeKind("continuous")


def noise_key(node: str) -> str:
    """Pseudo-parent name under which a member's exogenous noise reaches later members."""
    return f"__u_{node}"


class ConfoundedComponent(nn.Module):
    """The shared-noise model of one c-component with two or more nodes."""

    def __init__(
        self,
        graph: CausalGraph,
        nodes: tuple[str, ...],
        mode: str = "auto",
        latent_dim: int = 4,
        hidden: int = 128,
        kl_weight: float = 1.0,
        pool: int = 8,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"confounder mode must be one of {MODES}, got {mode!r}")
        if len(nodes) < 2:
            raise ValueError(f"a confounded component needs two or more nodes, got {list(nodes)}")
        for key, value in (("latent_dim", latent_dim), ("hidden", hidden), ("pool", pool)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"mechanism.confounder.{key} must be a whole number >= 1, got {value!r}")
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, int | float) or not kl_weight >= 0:
            raise ValueError(f"mechanism.confounder.kl_weight must be a number >= 0, got {kl_weight!r}")
        self.nodes = tuple(nodes)
        self.name = "+".join(self.nodes)
        kinds = [graph.kinds[n] for n in self.nodes]
        if mode == "auto":
            early_continuous = all(k.name == "continuous" for k in kinds[:-1])
            mode = "autoregressive" if early_continuous and not any(k.is_image for k in kinds) else "latent"
        if mode == "autoregressive":
            bad = [n for n, k in zip(self.nodes[:-1], kinds[:-1]) if k.name != "continuous"]
            if bad:
                raise ValueError(
                    f"component {self.name!r}: autoregressive confounding needs continuous members before the "
                    f"last, {bad} are not; use mechanism.confounder.mode=latent"
                )
        self.mode = mode
        self.config = {"mode": mode, "latent_dim": latent_dim, "hidden": hidden, "kl_weight": kl_weight, "pool": pool}
        self.kl_weight = kl_weight
        self.latent_dim = latent_dim
        if mode == "latent":
            outside = sorted({p for n in self.nodes for p in graph.parents(n)} - set(self.nodes), key=graph.nodes.index)
            self.outside = tuple(outside)
            self.pool = pool
            self.member_kinds = {n: graph.kinds[n] for n in self.nodes}
            self.parent_encoder = ParentEncoder({p: graph.kinds[p] for p in outside}) if outside else None
            feat = sum(self._member_dim(k) for k in self.member_kinds.values())
            feat += self.parent_encoder.dim if self.parent_encoder is not None else 0
            self.encoder = nn.Sequential(
                nn.Linear(feat, hidden),
                nn.SiLU(),
                nn.Linear(hidden, hidden),
                nn.SiLU(),
                nn.Linear(hidden, 2 * latent_dim),
            )
            self.member_norm = ParentEncoder({n: k for n, k in self.member_kinds.items() if not k.is_image})

    # ----- pseudo-parents -----
    def latent_keys(self) -> list[str]:
        return [f"__z_{self.name}_{k}" for k in range(self.latent_dim)]

    def extras(self, node: str) -> dict[str, NodeKind]:
        """Pseudo-parents that member `node` reads besides its graph parents."""
        if self.mode == "latent":
            return {k: _CONT for k in self.latent_keys()}
        i = self.nodes.index(node)
        return {noise_key(n): _CONT for n in self.nodes[:i]}

    # ----- abduction and sampling of the shared noise -----
    def _member_dim(self, kind: NodeKind) -> int:
        if kind.is_image:
            return kind.shape[0] * min(self.pool, kind.shape[1]) * min(self.pool, kind.shape[2])
        return kind.dim

    def posterior(self, values: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """q(z | members, outside parents): mean and log-variance (latent mode)."""
        feats = []
        plain = {n: values[n] for n, k in self.member_kinds.items() if not k.is_image}
        if plain:
            feats.append(self.member_norm(plain))
        for n, k in self.member_kinds.items():
            if k.is_image:
                size = (min(self.pool, k.shape[1]), min(self.pool, k.shape[2]))
                feats.append(nn.functional.adaptive_avg_pool2d(values[n].float(), size).flatten(1))
        if self.parent_encoder is not None:
            feats.append(self.parent_encoder({p: values[p] for p in self.outside}))
        mu, logvar = self.encoder(torch.cat(feats, 1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def _split_z(self, z: Tensor) -> dict[str, Tensor]:
        return {k: z[:, i : i + 1] for i, k in enumerate(self.latent_keys())}

    def abduct_shared(
        self, values: Mapping[str, Tensor], mechanisms: Mapping[str, Any]
    ) -> dict[str, dict[str, Tensor]]:
        """The shared noise of every member, from factual `values` (members and their parents)."""
        if self.mode == "latent":
            z = self._split_z(self.posterior(values)[0])
            return {n: z for n in self.nodes}
        out, seen = {}, {}
        for n in self.nodes:
            out[n] = dict(seen)
            mech = mechanisms[n]
            pa = {p: values[p] for p in mech.parents if not p.startswith("__")}
            seen[noise_key(n)] = mech.abduct(values[n], {**pa, **out[n]})
        return out

    def sample_shared(self, n: int, mechanisms: Mapping[str, Any]) -> tuple[dict[str, dict[str, Tensor]], dict]:
        """Shared noise drawn from its prior; in autoregressive mode also every member's own noise."""
        if self.mode == "latent":
            z = self._split_z(torch.randn(n, self.latent_dim, device=self.encoder[0].weight.device))
            return {m: z for m in self.nodes}, {}
        own = {m: mechanisms[m].sample_noise(n) for m in self.nodes}
        shared, seen = {}, {}
        for m in self.nodes:
            shared[m] = dict(seen)
            seen[noise_key(m)] = own[m]
        return shared, own

    # ----- joint training objective -----
    def loss(self, batch: Mapping[str, Tensor], mechanisms: Mapping[str, Any]) -> dict[str, Tensor]:
        """Joint objective of the component: exact joint NLL (autoregressive) or joint negative ELBO (latent)."""
        terms: dict[str, Tensor] = {}
        total = 0.0
        if self.mode == "latent":
            mu, logvar = self.posterior(batch)
            z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
            shared = {m: self._split_z(z) for m in self.nodes}
            kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
            terms["confounder_kl"] = kl.detach()
            total = total + self.kl_weight * kl
        else:
            shared, seen = {}, {}
            for m in self.nodes:
                shared[m] = dict(seen)
                mech = mechanisms[m]
                pa = {p: batch[p] for p in mech.parents if not p.startswith("__")}
                seen[noise_key(m)] = mech.abduct(batch[m], {**pa, **shared[m]})
        for m in self.nodes:
            mech = mechanisms[m]
            pa = {p: batch[p] for p in mech.parents if not p.startswith("__")}
            member = mech.loss(batch[m], {**pa, **shared[m]})
            for k, v in member.items():
                terms[f"{m}/{k}"] = v.detach()
            total = total + member["loss"]
        terms["loss"] = total
        return terms
