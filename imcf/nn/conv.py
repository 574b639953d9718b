"""Convolutional building blocks shared by the image families (VAE, HVAE, GAN): residual blocks with
optional FiLM conditioning, encoders that downsample by 2 per stage and decoders that upsample by 2."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: image sizes the image families are tuned and tested for (C, H, W); others work if H == W is a power of 2
SUPPORTED_IMAGE_SHAPES = ((1, 32, 32), (3, 64, 64))


def check_image_shape(shape: Sequence[int], node: str = "?") -> tuple[int, int, int]:
    """Validate an image node's (C, H, W): square, a power of two, at least 4 pixels a side."""
    if shape is None or len(shape) != 3:
        raise ValueError(f"image node {node!r}: shape must be (C, H, W), got {shape!r}")
    c, h, w = (int(s) for s in shape)
    if h != w or h < 4 or h & (h - 1):
        raise ValueError(f"image node {node!r}: needs a square power-of-two image >= 4 px, got {c}x{h}x{w}")
    return c, h, w


def num_stages_for(size: int, bottom: int) -> int:
    """Number of resolutions from `size` down to `bottom` (both powers of two), halving each time."""
    if bottom > size or size % bottom or (size // bottom) & (size // bottom - 1):
        raise ValueError(f"cannot reach resolution {bottom} from {size} by halving")
    return (size // bottom).bit_length()


def cpu_layout(x: Tensor) -> Tensor:
    """`x` in channels-last memory on CPU, unchanged elsewhere: on CPU (oneDNN) these blocks' convolutions and
    nearest upsampling run faster channels-last (the default image mechanism: counterfactuals 1.7x, training steps
    1.3x; `benchmarks/image_speed.py`); values are the same up to float rounding. Channels-last propagates through
    the blocks from their first layer."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" and x.dim() == 4 else x


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown norm {kind!r}; expected none, group or batch")


class ResBlock(nn.Module):
    """Pre-activation residual block: out = skip(x) + conv3x3(act(FiLM(conv3x3(act(norm(x)))))).

    `cond_dim > 0` adds FiLM conditioning (per-channel scale and shift from a (B, cond_dim) vector) after
    the first convolution. `residual=False` drops the skip path (a plain conv stack, e.g. for heads).
    `out_scale` multiplies the last convolution's initial weights (VDVAE scales by 1/sqrt(depth) so deep
    stacks start close to the identity).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        hidden: int | None = None,
        cond_dim: int = 0,
        residual: bool = True,
        norm: str = "none",
        out_scale: float = 1.0,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        hidden = hidden or out_channels
        self.norm = _norm(norm, in_channels)
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, out_channels, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight.mul_(out_scale)
        self.film = nn.Linear(cond_dim, 2 * hidden) if cond_dim > 0 else None
        if self.film is not None:  # start as the identity FiLM
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.residual = residual
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if residual and in_channels != out_channels else None

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.conv1(F.gelu(self.norm(x)))
        if self.film is not None:
            if cond is None:
                raise ValueError("ResBlock built with cond_dim > 0 needs a cond vector")
            scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(F.gelu(h))
        if not self.residual:
            return h
        return h + (x if self.skip is None else self.skip(x))


class ConvEncoder(nn.Module):
    """Image (B, C, H, W) -> one feature map per stage, highest resolution first; stage i has width
    `widths[i]` at resolution H / 2**i (a stem conv, `blocks` residual blocks per stage, 2x avg-pool between).
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int],
        blocks: int = 1,
        cond_dim: int = 0,
        norm: str = "none",
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("ConvEncoder needs at least one width")
        self.widths = [int(w) for w in widths]
        self.stem = nn.Conv2d(in_channels, self.widths[0], 3, padding=1)
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        prev = self.widths[0]
        for w in self.widths:
            self.transitions.append(nn.Conv2d(prev, w, 1) if prev != w else nn.Identity())
            self.stages.append(nn.ModuleList(ResBlock(w, cond_dim=cond_dim, norm=norm) for _ in range(blocks)))
            prev = w

    def forward(self, x: Tensor, cond: Tensor | None = None) -> list[Tensor]:
        h = self.stem(cpu_layout(x))
        out = []
        for i, (trans, stage) in enumerate(zip(self.transitions, self.stages)):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            h = trans(h)
            for block in stage:
                h = block(h, cond)
            out.append(h)
        return out


class ConvDecoder(nn.Module):
    """Feature map at the lowest resolution -> features at full resolution, mirroring `ConvEncoder`:
    `widths` are listed highest resolution first (as for the encoder) and traversed in reverse, with
    nearest 2x upsampling between stages and optional FiLM conditioning in every block."""

    def __init__(
        self,
        widths: Sequence[int],
        blocks: int = 1,
        cond_dim: int = 0,
        norm: str = "none",
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("ConvDecoder needs at least one width")
        self.widths = [int(w) for w in reversed(widths)]
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        prev = self.widths[0]
        for w in self.widths:
            self.transitions.append(nn.Conv2d(prev, w, 1) if prev != w else nn.Identity())
            self.stages.append(nn.ModuleList(ResBlock(w, cond_dim=cond_dim, norm=norm) for _ in range(blocks)))
            prev = w

    @property
    def out_channels(self) -> int:
        return self.widths[-1]

    def forward(self, h: Tensor, cond: Tensor | None = None) -> Tensor:
        h = cpu_layout(h)
        for i, (trans, stage) in enumerate(zip(self.transitions, self.stages)):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = trans(h)
            for block in stage:
                h = block(h, cond)
        return h


def broadcast_cond(cond: Tensor, like: Tensor) -> Tensor:
    """(B, D) vector -> (B, D, H, W) map matching `like`'s spatial size, for concatenation."""
    return cond[:, :, None, None].expand(-1, -1, like.shape[2], like.shape[3])
