"""Pixel likelihoods for images in [-1, 1]: a head turns decoder features into a per-pixel location and scale,
scored as a Gaussian density, a Gaussian discretised into 256 bins (as 8-bit images were), or a Laplace density (its
location the pixel's median rather than its mean)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LIKELIHOODS = ("gaussian", "discretized_gaussian", "laplace")
_BIN = 1.0 / 255.0  # half a bin width for 8-bit data scaled to [-1, 1]


def discretized_gaussian_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise log P(x) of a Gaussian integrated over x's 8-bit bin; the end bins take the tails."""
    centred = x - loc
    inv = torch.exp(-log_scale)
    upper = inv * (centred + _BIN)
    lower = inv * (centred - _BIN)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    delta = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    # far in a tail the bin mass underflows: use density x bin width at the bin centre instead
    mid = inv * centred
    log_pdf_mid = -0.5 * mid**2 - 0.5 * math.log(2 * math.pi) - log_scale + math.log(2 * _BIN)
    log_mass = torch.where(delta > 1e-5, torch.log(delta.clamp(min=1e-12)), log_pdf_mid)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_mass))


def gaussian_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise log N(x; loc, exp(log_scale)^2)."""
    return -0.5 * ((x - loc) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)


def laplace_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise log Laplace(x; loc, b) with the standard deviation exp(log_scale), b = exp(log_scale) / sqrt(2).
    The loss is |x - loc| / b: the best location is the median of what the latents leave open (a stroke pixel that is
    on in most images like it is drawn on), where a Gaussian's is the mean (drawn grey)."""
    log_b = log_scale - 0.5 * math.log(2.0)
    return -(x - loc).abs() * torch.exp(-log_b) - log_b - math.log(2.0)


_LOG_PROBS = {
    "gaussian": gaussian_log_prob,
    "discretized_gaussian": discretized_gaussian_log_prob,
    "laplace": laplace_log_prob,
}


class ImageLikelihood(nn.Module):
    """Decoder features (B, F, H, W) -> a per-pixel location and scale over (B, C, H, W) images in [-1, 1].

    `kind`: "discretized_gaussian" (default; bounded likelihood, no variance collapse on flat
    backgrounds), "gaussian" or "laplace" (an L1 loss: decodes centred on the median). `std`: the pixel noise's
    standard deviation under any kind; None learns a per-pixel scale from the features, a number fixes it.
    `min_log_std` bounds the learned scale from below for stability.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kind: str = "discretized_gaussian",
        std: float | None = None,
        min_log_std: float = -7.0,
    ) -> None:
        super().__init__()
        if kind not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {kind!r}; expected one of {LIKELIHOODS}")
        if std is not None and std <= 0:
            raise ValueError(f"likelihood std must be > 0 or null (learned), got {std}")
        self.kind = kind
        self.fixed_log_std = None if std is None else math.log(std)
        self.min_log_std = float(min_log_std)
        self.out_channels = out_channels
        n_out = out_channels if std is not None else 2 * out_channels
        self.head = nn.Conv2d(in_channels, n_out, 1)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Features -> (loc, log_scale), each (B, C, H, W)."""
        out = self.head(F.gelu(h))
        if self.fixed_log_std is not None:
            return out, torch.full_like(out, self.fixed_log_std)
        loc, raw = out.chunk(2, dim=1)
        # soft lower bound keeps gradients alive near the floor
        return loc, self.min_log_std + F.softplus(raw - self.min_log_std)

    def log_prob(self, x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
        """Per-sample log-likelihood (B,), summed over pixels, in nats."""
        return _LOG_PROBS[self.kind](x, loc, log_scale).flatten(1).sum(1)

    @staticmethod
    def mean(loc: Tensor) -> Tensor:
        """The image the likelihood is centred on, in the valid range."""
        return loc.clamp(-1.0, 1.0)
