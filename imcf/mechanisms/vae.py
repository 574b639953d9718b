"""Conditional convolutional VAE for an image node: q(z | x, pa), p(x | z, pa), z ~ N(0, I)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from imcf.graph import NodeKind
from imcf.mechanisms.base import check_sizes
from imcf.mechanisms.latent_image import ELBOImageMechanism, LatentNoise
from imcf.nn.conv import ConvDecoder, ConvEncoder, broadcast_cond
from imcf.registry import MECHANISMS


@MECHANISMS.register("vae")
class ConditionalVAE(ELBOImageMechanism):
    """Conditional VAE: the encoder sees the image with the parent features broadcast as extra channels;
    the decoder maps [z, pa] to a low-resolution map and upsamples it with FiLM-conditioned residual blocks.

    Config (besides `LatentImageMechanism`'s): latent_dim, widths (per resolution, full resolution first;
    the bottom resolution is H / 2**(len(widths) - 1)), blocks (residual blocks per resolution),
    likelihood, likelihood_std.
    """

    abduction_assumption = (
        "approximate abduction: the encoder's posterior q(z | x, pa) stands in for the true noise posterior; the "
        "counterfactual assumes the latent captures all of the image's noise and nothing of its parents "
        "(disentanglement), and reconstruction error is attributed to a fixed residual"
    )

    def __init__(
        self,
        node: str,
        kind: NodeKind,
        parent_kinds: Mapping[str, NodeKind],
        latent_dim: int = 16,
        widths: Sequence[int] = (32, 64, 64, 128),
        blocks: int = 1,
        likelihood: str = "discretized_gaussian",
        likelihood_std: float | None = None,
        **common: Any,
    ) -> None:
        super().__init__(node, kind, parent_kinds, **common)
        check_sizes("vae", node, latent_dim=latent_dim, widths=widths)
        check_sizes("vae", node, 0, blocks=blocks)
        widths = [int(w) for w in widths]
        if self.size % 2 ** (len(widths) - 1):
            raise ValueError(f"vae {node!r}: {len(widths)} widths need size divisible by {2 ** (len(widths) - 1)}")
        self.latent_dim = int(latent_dim)
        self.bottom = self.size // 2 ** (len(widths) - 1)
        d = self.cond_features
        self.encoder = ConvEncoder(self.channels + d, widths, blocks, cond_dim=d)
        flat = widths[-1] * self.bottom**2
        self.to_posterior = nn.Linear(flat + d, 2 * self.latent_dim)
        self.from_latent = nn.Linear(self.latent_dim + d, flat)
        self.decoder = ConvDecoder(widths, blocks, cond_dim=d)
        self.likelihood = self.build_likelihood(widths[0], likelihood, likelihood_std)
        self.check_latent_scales()

    def posterior(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | x, pa) as (mean, log-variance)."""
        inp = torch.cat([x, broadcast_cond(cond, x)], 1) if cond.shape[1] else x
        h = self.encoder(inp, cond if cond.shape[1] else None)[-1]
        mu, logvar = self.to_posterior(torch.cat([h.flatten(1), cond], 1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def _decode(self, z: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        h = self.from_latent(torch.cat([z, cond], 1)).view(z.shape[0], -1, self.bottom, self.bottom)
        return self.likelihood(self.decoder(h, cond if cond.shape[1] else None))

    def encode_latents(self, x: Tensor, cond: Tensor) -> LatentNoise:
        mu, logvar = self.posterior(x, cond)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.abduct_sample else mu
        # the prior is N(0, I) whatever the parents, so the latent is its own standardised coordinate
        return LatentNoise([z], standardised=self.latent_mode == "exogenous")

    def decode_dist(self, noise: LatentNoise, cond: Tensor) -> tuple[Tensor, Tensor]:
        return self._decode(noise.latents[0], cond)

    def elbo(self, x: Tensor, cond: Tensor, gain: Tensor | None = None) -> dict[str, Tensor]:
        mu, logvar = self.posterior(self.to_shape(x, gain), cond)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        loc, log_scale = self._decode(z, cond)
        nll = -self.likelihood.log_prob(x, self.from_shape(loc, gain), log_scale)
        kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(1)
        return {"nll": nll, "kl": kl, "codes": [mu]}

    def noise_shapes(self) -> list[tuple[int, ...]]:
        return [(self.latent_dim,)]
