"""An output gain on images in [-1, 1]: x = g * (s + 1) - 1, with s the shape a network models and g > 0 a
brightness gain set by some parents (`gain_parents` of the VAE, HVAE, GAN and DDIM), and the power-law gain
that computes it for all four."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def to_shape(x: Tensor, gain: Tensor | None) -> Tensor:
    """Image in [-1, 1] -> the shape the networks model: (x + 1) / g - 1 (x itself without a gain)."""
    return x if gain is None else (x + 1) / gain - 1


def from_shape(s: Tensor, gain: Tensor | None) -> Tensor:
    """The inverse of `to_shape`: g * (s + 1) - 1."""
    return s if gain is None else gain * (s + 1) - 1


class PowerGain(nn.Module):
    """A power law of positive continuous parents, g = exp(offset) * prod_p (v_p / ref_p) ** a_p per channel
    (`gain_form` power or proportional of the VAE and HVAE). Exponent 1 and offset 0 are a proportional gain, the
    exact model of a brightness that scales every pixel (Morpho-MNIST's intensity). `learned`: the exponent and
    offset are parameters, started proportional (an exponent learned from 0 moves about one optimiser step size
    per step, too slowly for a short run); otherwise the gain stays proportional (the DDIM's and the GAN's only
    form)."""

    def __init__(self, parents: Sequence[str], channels: int, node: str, learned: bool = True) -> None:
        super().__init__()
        self.parents, self.node = tuple(parents), node
        exponent, offset = torch.ones(len(self.parents), channels), torch.zeros(channels)
        if learned:
            self.exponent, self.offset = nn.Parameter(exponent), nn.Parameter(offset)
        else:
            self.register_buffer("exponent", exponent, persistent=False)
            self.register_buffer("offset", offset, persistent=False)

    def forward(self, values: Tensor, reference: Tensor) -> Tensor:
        """(B, P) parent values, (P,) positive reference values -> gain (B, C, 1, 1)."""
        if bool((values <= 0).any()):
            col = int((values <= 0).any(0).nonzero()[0])
            row = int((values[:, col] <= 0).nonzero()[0])
            raise ValueError(
                f"{self.node!r}: a power-law gain needs positive gain parents; {self.parents[col]!r} is "
                f"{float(values[row, col]):g} in row {row}"
            )
        logs = (values / reference.clamp(min=1e-12)).log()
        return (logs @ self.exponent.to(logs.dtype) + self.offset.to(logs.dtype)).exp()[:, :, None, None]
