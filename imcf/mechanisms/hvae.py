"""Hierarchical VAE for an image node in the style of VDVAE and causal-gen (Ribeiro et al. 2023):
a bottom-up encoder, then a top-down decoder whose latent blocks hold a conditional prior
p(z_l | z_<l, pa) and a posterior q(z_l | z_<l, x, pa) at every resolution, with per-level KL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imcf.graph import NodeKind
from imcf.mechanisms.base import check_flag, check_sizes
from imcf.mechanisms.latent_image import ELBOImageMechanism, LatentNoise
from imcf.nn.conv import ConvEncoder, ResBlock, broadcast_cond, cpu_layout
from imcf.registry import MECHANISMS

_MIN_SCALE = 1e-3


def gaussian_kl(q_loc: Tensor, q_scale: Tensor, p_loc: Tensor, p_scale: Tensor) -> Tensor:
    """KL(N(q_loc, q_scale^2) || N(p_loc, p_scale^2)), elementwise."""
    return torch.log(p_scale / q_scale) + (q_scale**2 + (q_loc - p_loc) ** 2) / (2 * p_scale**2) - 0.5


class TopDownBlock(nn.Module):
    """One latent level: prior net on [h, pa], posterior net on [h, encoder features, pa], z projected back
    into h, then a residual block. `z_dim == 0` makes it a plain residual block (no latent). `film` lets the
    parents modulate that residual block too (FiLM, starting as the identity): the parents then reach every
    resolution, the latent-free full-resolution levels included."""

    def __init__(self, width: int, z_dim: int, cond_dim: int, out_scale: float, film: bool = False) -> None:
        super().__init__()
        self.z_dim = z_dim
        if z_dim:
            self.prior = ResBlock(width + cond_dim, 2 * z_dim + width, hidden=width, residual=False)
            self.posterior = ResBlock(2 * width + cond_dim, 2 * z_dim, hidden=width, residual=False)
            self.z_proj = nn.Conv2d(z_dim, width, 1)
            with torch.no_grad():
                self.z_proj.weight.mul_(out_scale)
                self.prior.conv2.weight[2 * z_dim :].mul_(0.0)  # the prior's h update starts at zero
        self.res = ResBlock(width, cond_dim=cond_dim if film else 0, out_scale=out_scale)

    def forward(
        self,
        h: Tensor,
        cond_map: Tensor,
        enc: Tensor | None = None,
        code: Tensor | None = None,
        standardised: bool = False,
        sample: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Posterior path when `enc` is given (z sampled or its mean), else `code` as z (or as standardised
        prior noise), else a prior sample. Returns the new h and {z, u (standardised z), kl}."""
        emb = cond_map[:, :, 0, 0] if self.res.film is not None else None
        if not self.z_dim:
            return self.res(h, emb), {}
        p_loc, p_raw, h_add = self.prior(torch.cat([h, cond_map], 1)).split([self.z_dim, self.z_dim, h.shape[1]], dim=1)
        p_scale = F.softplus(p_raw) + _MIN_SCALE
        stats: dict[str, Tensor] = {}
        if enc is not None:
            q_loc, q_raw = self.posterior(torch.cat([h, enc, cond_map], 1)).chunk(2, dim=1)
            q_scale = F.softplus(q_raw) + _MIN_SCALE
            z = q_loc + q_scale * torch.randn_like(q_loc) if sample else q_loc
            stats["kl"] = gaussian_kl(q_loc, q_scale, p_loc, p_scale).flatten(1).sum(1)
            stats["u_mean"] = (q_loc - p_loc) / p_scale
        elif code is not None:
            z = p_loc + p_scale * code if standardised else code
        else:
            z = p_loc + p_scale * torch.randn_like(p_loc)
        stats["z"] = z
        stats["u"] = (z - p_loc) / p_scale
        h = self.res(h + h_add + self.z_proj(z), emb)
        return h, stats


@MECHANISMS.register("hvae")
class HierarchicalVAE(ELBOImageMechanism):
    """VDVAE-style conditional hierarchical VAE.

    Config (besides `LatentImageMechanism`'s): widths (per resolution, full resolution first; resolution i
    is H / 2**i), latent_dims (latent channels per resolution; 0 = no latent there), blocks (top-down
    blocks per resolution, an int or a list), enc_blocks (encoder residual blocks per resolution),
    cond_dim (parent embedding size), film (the parents also modulate every top-down residual block, so they
    reach the latent-free levels), likelihood, likelihood_std. Per-level KL terms are logged as
    `kl_<resolution>`.
    """

    latents_centred = False  # the prior is parent-conditioned: only its standardised codes are centred
    abduction_assumption = (
        "approximate abduction: the hierarchical encoder's posterior over all latent levels stands in for the "
        "true noise posterior; the counterfactual assumes the latents are independent of the parents and capture "
        "the image's noise (disentanglement), reconstruction error is a residual"
    )

    def __init__(
        self,
        node: str,
        kind: NodeKind,
        parent_kinds: Mapping[str, NodeKind],
        widths: Sequence[int] = (32, 64, 64, 64),
        latent_dims: Sequence[int] = (4, 8, 8, 8),
        blocks: int | Sequence[int] = 1,
        enc_blocks: int = 1,
        cond_dim: int = 16,
        film: bool = False,
        likelihood: str = "discretized_gaussian",
        likelihood_std: float | None = None,
        **common: Any,
    ) -> None:
        super().__init__(node, kind, parent_kinds, **common)
        check_sizes("hvae", node, widths=widths)
        check_sizes("hvae", node, 0, blocks=blocks)
        check_sizes("hvae", node, 0, latent_dims=latent_dims)
        check_sizes("hvae", node, cond_dim=cond_dim)  # 0 would ignore the parents
        check_flag("hvae", node, "film", film)
        if not any(int(z) for z in latent_dims):
            raise ValueError(f"hvae {node!r}: latent_dims must have a latent at some resolution, got {latent_dims!r}")
        widths = [int(w) for w in widths]
        n = len(widths)
        blocks = [int(blocks)] * n if isinstance(blocks, int) else [int(b) for b in blocks]
        latent_dims = [int(z) for z in latent_dims]
        for key, val in (("latent_dims", latent_dims), ("blocks", blocks)):
            if len(val) != n:
                raise ValueError(f"hvae {node!r}: {key} has {len(val)} entries, widths has {n}")
        if self.size % 2 ** (n - 1):
            raise ValueError(f"hvae {node!r}: {n} resolutions need size divisible by {2 ** (n - 1)}")
        self.resolutions = [self.size // 2**i for i in range(n)]
        self.latent_dims = latent_dims
        self.cond_dim = int(cond_dim) if self.cond_features else 0
        self.cond_embed = nn.Linear(self.cond_features, self.cond_dim) if self.cond_dim else None
        self.encoder = ConvEncoder(self.channels, widths, enc_blocks)
        out_scale = 1.0 / max(1, sum(blocks)) ** 0.5
        self.h_top = nn.Parameter(torch.zeros(1, widths[-1], self.resolutions[-1], self.resolutions[-1]))
        # top-down order: lowest resolution first
        self.levels = list(reversed(range(n)))
        self.transitions = nn.ModuleList(
            nn.Conv2d(widths[i + 1], widths[i], 1) if widths[i + 1] != widths[i] else nn.Identity()
            for i in range(n - 1)
        )
        self.stages = nn.ModuleList(
            nn.ModuleList(
                TopDownBlock(widths[i], latent_dims[i], self.cond_dim, out_scale, film=film) for _ in range(blocks[i])
            )
            for i in range(n)
        )
        self.likelihood = self.build_likelihood(widths[0], likelihood, likelihood_std)
        self.check_latent_scales()

    def _embed(self, cond: Tensor) -> Tensor:
        if self.cond_embed is None:
            return cond[:, :0]
        return F.gelu(self.cond_embed(cond))

    def top_down(
        self,
        cond: Tensor,
        acts: list[Tensor] | None = None,
        noise: LatentNoise | None = None,
        sample: bool = True,
    ) -> tuple[Tensor, Tensor, list[dict[str, Tensor]]]:
        """Run the decoder: posterior path (acts), given latents (noise), or the prior; -> (loc, log_scale, stats)."""
        b = cond.shape[0]
        emb = self._embed(cond)
        h = cpu_layout(self.h_top.expand(b, -1, -1, -1))
        stats: list[dict[str, Tensor]] = []
        codes = iter(noise.latents) if noise is not None else None
        for i in self.levels:
            if i < len(self.resolutions) - 1:
                h = self.transitions[i](F.interpolate(h, scale_factor=2, mode="nearest"))
            cond_map = broadcast_cond(emb, h)
            for block in self.stages[i]:
                code = next(codes) if codes is not None and block.z_dim else None
                enc = acts[i] if acts is not None else None
                std = noise.standardised if noise is not None else False
                h, s = block(h, cond_map, enc=enc, code=code, standardised=std, sample=sample)
                if s:
                    s["resolution"] = self.resolutions[i]
                    stats.append(s)
        loc, log_scale = self.likelihood(h)
        return loc, log_scale, stats

    def encode_latents(self, x: Tensor, cond: Tensor) -> LatentNoise:
        _, _, stats = self.top_down(cond, acts=self.encoder(x), sample=self.abduct_sample)
        key = "u" if self.latent_mode == "exogenous" else "z"
        return LatentNoise([s[key] for s in stats], standardised=self.latent_mode == "exogenous")

    def decode_dist(self, noise: LatentNoise, cond: Tensor) -> tuple[Tensor, Tensor]:
        return self.top_down(cond, noise=noise)[:2]

    def elbo(self, x: Tensor, cond: Tensor, gain: Tensor | None = None) -> dict[str, Tensor]:
        loc, log_scale, stats = self.top_down(cond, acts=self.encoder(self.to_shape(x, gain)), sample=True)
        out = {"nll": -self.likelihood.log_prob(x, self.from_shape(loc, gain), log_scale)}
        out["kl"] = torch.stack([s["kl"] for s in stats]).sum(0) if stats else torch.zeros_like(out["nll"])
        key = "u_mean" if self.latent_mode == "exogenous" else "z"
        out["codes"] = [s[key] for s in stats]
        for s in stats:
            k = f"kl_{s['resolution']}"
            out[k] = out[k] + s["kl"] if k in out else s["kl"]
        return out

    def noise_shapes(self) -> list[tuple[int, ...]]:
        return [
            (self.latent_dims[i], self.resolutions[i], self.resolutions[i])
            for i in self.levels
            for _ in self.stages[i]
            if self.latent_dims[i]
        ]
