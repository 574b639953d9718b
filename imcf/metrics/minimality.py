"""Minimality: the counterfactual latent divergence (CLD) of the counterfactual benchmark, computed correctly.

An unconditional VAE (`LatentVAE`, trained offline on the dataset's training images, cached like the
predictors) gives every image a Gaussian posterior q(z | x) = N(loc, exp(logscale)^2). For a factual x with
counterfactual x' under do(a):

* d = KL(q(z | x') || q(z | x)), averaged over latent dimensions (location AND log-scale of both posteriors;
  the published code used the mean as both);
* p_closer = P(KL(q(z | r) || q(z | x)) <= d) over reference images r whose `a` is in the counterfactual's group
  (same bin / class as the intervened value): the counterfactual should be closer to x than they are;
* p_farther = P(KL(q(z | r) || q(z | x)) >= d) over reference images in the factual's group: it should have
  left the factual's group;
* CLD = log(w1 exp(p_closer) + w2 exp(p_farther)), in [0, 1] for w1 + w2 = 1; lower is better.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from imcf.metrics.base import CounterfactualStep, FactualStep, Metric, Result, no_image, summary
from imcf.metrics.interventions import groups
from imcf.registry import METRICS

Posterior = tuple[Tensor, Tensor]  # (loc, logscale), each (N, D)


def gaussian_kl(q_loc: Tensor, q_logscale: Tensor, p_loc: Tensor, p_logscale: Tensor) -> Tensor:
    """Elementwise KL(N(q_loc, e^q_logscale^2) || N(p_loc, e^p_logscale^2)); broadcasts."""
    return (
        p_logscale
        - q_logscale
        + 0.5 * (torch.exp(2 * (q_logscale - p_logscale)) + (q_loc - p_loc) ** 2 * torch.exp(-2 * p_logscale))
        - 0.5
    )


def latent_kl(q: Posterior, p: Posterior) -> Tensor:
    """Per-sample KL(q || p) of diagonal Gaussians (N,), averaged over latent dimensions."""
    return gaussian_kl(q[0], q[1], p[0], p[1]).mean(-1)


def counterfactual_latent_divergence(
    factual: Posterior,
    counterfactual: Posterior,
    reference: Posterior,
    reference_groups: Tensor,
    factual_groups: Tensor,
    counterfactual_groups: Tensor,
    weights: Sequence[float] = (0.8, 0.2),
    chunk: int = 256,
) -> dict[str, Tensor]:
    """Per-sample {"cld", "latent_kl", "p_closer", "p_farther"} (N,); NaN where a group has no reference.

    `reference_groups` (M,) labels the reference posteriors, `factual_groups` / `counterfactual_groups` (N,)
    the group of the intervened attribute's factual / counterfactual value.
    """
    w1, w2 = (float(w) for w in weights)
    div = latent_kl(counterfactual, factual)
    n = div.shape[0]
    p_closer, p_farther = torch.full((n,), math.nan), torch.full((n,), math.nan)
    ref_loc, ref_ls = reference[0][None], reference[1][None]  # (1, M, D)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        # (c, M): KL(q(z | r_j) || q(z | x_i))
        s_ij = gaussian_kl(ref_loc, ref_ls, factual[0][s:e, None], factual[1][s:e, None]).mean(-1)
        d = div[s:e, None]
        in_cf = reference_groups[None] == counterfactual_groups[s:e, None]
        in_f = reference_groups[None] == factual_groups[s:e, None]
        n_cf, n_f = in_cf.sum(1), in_f.sum(1)
        closer = ((s_ij <= d) & in_cf).sum(1) / n_cf.clamp(min=1)
        farther = ((s_ij >= d) & in_f).sum(1) / n_f.clamp(min=1)
        p_closer[s:e] = torch.where(n_cf > 0, closer.float().cpu(), torch.tensor(math.nan))
        p_farther[s:e] = torch.where(n_f > 0, farther.float().cpu(), torch.tensor(math.nan))
    cld = torch.log(w1 * torch.exp(p_closer) + w2 * torch.exp(p_farther))
    return {"cld": cld, "latent_kl": div.cpu(), "p_closer": p_closer, "p_farther": p_farther}


@METRICS.register("minimality")
class Minimality(Metric):
    """CLD and latent KL per intervention in the minimality VAE's latent space; the reference set is the factual
    evaluation images, grouped by the intervened attribute's bin or class."""

    set_level = True

    def __init__(self, setting: Any) -> None:
        super().__init__(setting)
        self.posts: dict[str, list[tuple[Tensor, Tensor]]] = defaultdict(list)

    @classmethod
    def requires(cls, cfg: Any) -> set[str]:
        return {"minimality_vae"}

    @classmethod
    def unsupported(cls, graph: Any, dataset: Any) -> str:
        return no_image(graph)

    def factual(self, step: FactualStep) -> int:
        for m, vae in self.setting.models.vaes.items():
            self.posts[f"{m}|factual"].append(tuple(p.cpu() for p in vae.posterior(step.factual[m])))
        return 0

    def update(self, step: CounterfactualStep) -> int:
        t, s = step.target, self.setting
        for m, vae in s.models.vaes.items():
            self.posts[f"{m}|{step.row}"].append(tuple(p.cpu() for p in vae.posterior(step.cf[m])))
        kind, edges = s.graph.kinds[t], s.edges.get(t)
        self.posts[f"groups|{step.row}"].append((groups(kind, step.factual[t], edges), groups(kind, step.value, edges)))
        return step.size

    def compute(self) -> dict[str, Result]:
        s, results = self.setting, {}
        if s.num_samples < 2:
            return results
        weights = s.cfg.minimality.weights
        for m in s.models.vaes:
            ref = tuple(torch.cat([p[i] for p in self.posts[f"{m}|factual"]]) for i in range(2))
            for t in s.intervened:
                row = f"do({t})"
                cf_post = tuple(torch.cat([p[i] for p in self.posts[f"{m}|{row}"]]) for i in range(2))
                g_f = torch.cat([g for g, _ in self.posts[f"groups|{row}"]])
                g_cf = torch.cat([g for _, g in self.posts[f"groups|{row}"]])
                g_ref = groups(s.graph.kinds[t], s.pool[t], s.edges.get(t))
                out = counterfactual_latent_divergence(ref, cf_post, ref, g_ref, g_f, g_cf, weights)
                results[f"minimality/{row}/{m}:cld"] = summary(out["cld"])
                results[f"minimality/{row}/{m}:latent_kl"] = summary(out["latent_kl"])
        return results
