"""The minimality metric's latent space: a small unconditional VAE trained offline on the dataset's training
images and cached like the predictors; its posterior q(z | x) is what the CLD (`imcf.metrics.minimality`)
compares counterfactuals in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imcf.data.datamodule import build_dataset
from imcf.evaluators.cache import fit_from_config, load_or_fit, model_spec, seeded
from imcf.nn.conv import ConvDecoder, ConvEncoder, num_stages_for

Posterior = tuple[Tensor, Tensor]  # (loc, logscale), each (N, D)


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
        kl = (0.5 * (torch.exp(2 * logscale) + loc**2 - 1) - logscale).sum(1).mean()  # KL(q || N(0, I))
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
    `fingerprint` (`imcf.evaluators.cache.dataset_fingerprint`) ties the cache to the dataset's content.
    """
    # version 2: initial weights from the seed (`seeded`)
    spec = model_spec("vae", 2, dataset, options, fingerprint, image_node, image_shape, cfg, seed,
                      latent_dim=int(cfg.latent_dim))  # fmt: skip
    vae = seeded(seed, lambda: LatentVAE(image_shape, int(cfg.latent_dim), int(cfg.width), image_node=image_node))

    def train() -> dict[str, Any]:
        print(f"[imcf] training the minimality VAE for {dataset}/{image_node}")
        train_set = build_dataset(dataset, data_root, "train", **options)
        val = build_dataset(dataset, data_root, "val", **options)
        fit_from_config(vae, train_set, val, cfg, accelerator, seed, progress)
        return {}

    _, path = load_or_fit("minimality", spec, vae, cfg.path, data_root, train)
    return vae.eval(), path
