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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imcf.nn.conv import ConvDecoder, ConvEncoder, num_stages_for
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


@METRICS.register("latent_kl")
def latent_kl(q: Posterior, p: Posterior) -> Tensor:
    """Per-sample KL(q || p) of diagonal Gaussians (N,), averaged over latent dimensions."""
    return gaussian_kl(q[0], q[1], p[0], p[1]).mean(-1)


@METRICS.register("cld")
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


class LatentVAE(nn.Module):
    """A small unconditional conv VAE (imcf.nn encoder / decoder) whose posterior defines the CLD's latent.

    Gaussian likelihood with a fixed pixel std `pixel_std` on images in [-1, 1]; a `latent_dim` latent at 4x4.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 16,
        width: int = 32,
        pixel_std: float = 0.1,
        image_node: str = "image",
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        self.config = {
            "image_shape": [c, h, w],
            "latent_dim": latent_dim,
            "width": width,
            "pixel_std": pixel_std,
            "image_node": image_node,
        }
        self.image_node, self.pixel_std = image_node, pixel_std
        widths = [min(width * 2**i, 4 * width) for i in range(num_stages_for(h, 4))]
        self.encoder = ConvEncoder(c, widths)
        self.to_posterior = nn.Linear(widths[-1] * 16, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim, widths[-1] * 16)
        self.decoder = ConvDecoder(widths)
        self.to_image = nn.Conv2d(self.decoder.out_channels, c, 3, padding=1)
        self.bottom = widths[-1]

    def posterior(self, images: Tensor) -> Posterior:
        """q(z | x) as (loc, logscale), each (B, latent_dim)."""
        h = self.encoder(images.float())[-1].flatten(1)
        loc, logscale = self.to_posterior(h).chunk(2, dim=1)
        return loc, logscale.clamp(-10, 5)

    def decode(self, z: Tensor) -> Tensor:
        """Latent (B, latent_dim) -> mean image in [-1, 1]."""
        h = self.from_latent(z).reshape(z.shape[0], self.bottom, 4, 4)
        return torch.tanh(self.to_image(F.gelu(self.decoder(h))))

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Negative ELBO per image (nats): reconstruction + KL to N(0, I)."""
        x = batch[self.image_node].float()
        loc, logscale = self.posterior(x)
        z = loc + torch.exp(logscale) * torch.randn_like(loc)
        rec = (0.5 * ((self.decode(z) - x) / self.pixel_std) ** 2).flatten(1).sum(1).mean()
        kl = gaussian_kl(loc, logscale, torch.zeros_like(loc), torch.zeros_like(logscale)).sum(1).mean()
        return {"loss": rec + kl, "rec": rec, "kl": kl}


def load_or_train_vae(
    dataset: str,
    options: dict[str, Any],
    data_root: str,
    image_node: str,
    image_shape: Sequence[int],
    cfg: Any,
    accelerator: str = "auto",
    seed: int = 0,
    progress: bool = True,
    fingerprint: Mapping[str, Any] | None = None,
) -> tuple[LatentVAE, str]:
    """The cached unconditional VAE of `image_node` for this dataset, trained on its training images if absent.

    `cfg` is a MinimalityConfig (path, latent_dim, width, max_epochs, batch_size, lr, max_train_samples);
    `fingerprint` (`imcf.metrics.offline.dataset_fingerprint`) ties the cache to the dataset's content.
    """
    from imcf.data.datamodule import build_dataset
    from imcf.metrics.offline import cache_path, fit_from_config, load_cached, save_cached

    spec = {
        "what": "vae",
        "version": 1,
        "dataset": dataset,
        "options": dict(options),
        "data": dict(fingerprint or {}),
        "image_node": image_node,
        "image_shape": [int(s) for s in image_shape],
        "latent_dim": int(cfg.latent_dim),
        "width": int(cfg.width),
        "max_epochs": int(cfg.max_epochs),
        "batch_size": int(cfg.batch_size),
        "lr": float(cfg.lr),
        "max_train_samples": cfg.max_train_samples,
        "seed": seed,
    }
    path = cfg.path or cache_path(data_root, f"vae-{image_node}", spec)
    vae = LatentVAE(image_shape, int(cfg.latent_dim), int(cfg.width), image_node=image_node)
    if cfg.path or Path(path).is_file():
        if not Path(path).is_file():
            raise FileNotFoundError(f"minimality.path={cfg.path}: no such file")
        vae.load_state_dict(load_cached(path, spec, "minimality")["state_dict"])
        return vae.eval(), str(path)
    print(f"[imcf] training the minimality VAE for {dataset}/{image_node} -> {path}")
    train = build_dataset(dataset, data_root, "train", **options)
    val = build_dataset(dataset, data_root, "val", **options)
    fit_from_config(vae, train, val, cfg, accelerator, seed, progress)
    save_cached(path, spec, {"state_dict": vae.state_dict()})
    return vae.eval(), str(path)
