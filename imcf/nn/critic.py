"""A conditional critic (discriminator) for the adversarial realism term of the likelihood image families
(`ELBOImageMechanism`'s `adversarial` option): it tells real images under their parents from decodes under
parents the latent was not abducted with, so the decoder learns to draw counterfactual decodes as sharp as data."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from imcf.nn.conv import ConvEncoder, broadcast_cond, cpu_layout

LAYOUTS = ("residual", "strided")


def apply_spectral_norm(module: nn.Module) -> None:
    """Spectral normalisation on every convolution and linear layer of `module` and its children (in place)."""
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(module, name, spectral_norm(child))
        else:
            apply_spectral_norm(child)


class StridedConvs(nn.Module):
    """The DCGAN critic's trunk: a 4x4 stride-2 convolution and a leaky ReLU per width, so stage i runs at
    H / 2**(i + 1) (no convolution at full resolution: about a tenth of a residual trunk's cost at 32x32)."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        chans = [in_channels, *widths]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1) for a, b in zip(chans, chans[1:]))

    def forward(self, x: Tensor) -> list[Tensor]:
        h = cpu_layout(x)
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
        return [h]


class ConditionalCritic(nn.Module):
    """D(x, pa) -> logit (B,): conv stages over [x, pa broadcast as channels], a linear head on the flattened
    bottom features, plus the projection <embed(pa), features> (Miyato & Koyama 2018) so that an image drawn
    without the asked parents reads as fake. Every convolution and linear layer is spectrally normalised (a
    1-Lipschitz critic trains stably on the same optimiser step as the decoder).

    `layout`: "residual" (`ConvEncoder`, one residual block per width, the first at full resolution; bottom side
    H / 2**(len - 1)) or "strided" (`StridedConvs`; bottom side H / 2**len)."""

    def __init__(
        self,
        channels: int,
        size: int,
        widths: Sequence[int],
        cond_dim: int,
        hidden: int = 64,
        layout: str = "residual",
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if layout not in LAYOUTS:
            raise ValueError(f"critic layout must be one of {LAYOUTS}, got {layout!r}")
        halvings = len(widths) - 1 if layout == "residual" else len(widths)
        if not widths or size % 2**halvings:
            raise ValueError(f"critic widths {widths} need an image side ({size}) divisible by {2**halvings}")
        self.cond_dim = int(cond_dim)
        inp = channels + self.cond_dim
        self.convs = ConvEncoder(inp, widths, blocks=1) if layout == "residual" else StridedConvs(inp, widths)
        bottom = size // 2**halvings
        self.hidden = nn.Linear(widths[-1] * bottom**2, hidden)
        self.out = nn.Linear(hidden, 1)
        self.project = nn.Linear(self.cond_dim, hidden, bias=False) if self.cond_dim else None
        apply_spectral_norm(self)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        inp = torch.cat([x, broadcast_cond(cond, x)], 1) if self.cond_dim else x
        h = F.leaky_relu(self.hidden(F.leaky_relu(self.convs(inp)[-1], 0.2).flatten(1)), 0.2)
        logit = self.out(h).squeeze(1)
        if self.project is not None:
            logit = logit + (self.project(cond) * h).sum(1)
        return logit
