"""An output gain on images in [-1, 1]: x = g * (s + 1) - 1, with s the shape a network models and g > 0 a
brightness gain set by some parents (`gain_parents` of the VAE, HVAE and DDIM)."""

from __future__ import annotations

from torch import Tensor


def to_shape(x: Tensor, gain: Tensor | None) -> Tensor:
    """Image in [-1, 1] -> the shape the networks model: (x + 1) / g - 1 (x itself without a gain)."""
    return x if gain is None else (x + 1) / gain - 1


def from_shape(s: Tensor, gain: Tensor | None) -> Tensor:
    """The inverse of `to_shape`: g * (s + 1) - 1."""
    return s if gain is None else gain * (s + 1) - 1
