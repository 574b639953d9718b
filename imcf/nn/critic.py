"""A conditional critic (discriminator) for the adversarial realism term of the likelihood image families
(`ELBOImageMechanism`'s `adversarial` option): it tells real images under their parents from decodes under
parents the latent was not abducted with, so the decoder learns to draw counterfactual decodes as sharp as data."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from imcf.nn.conv import ConvEncoder, broadcast_cond


class ConditionalCritic(nn.Module):
    """D(x, pa) -> logit (B,): conv stages over [x, pa broadcast as channels], a linear head on the flattened
    bottom features, plus the projection <embed(pa), features> (Miyato & Koyama 2018) so that an image drawn
    without the asked parents reads as fake. Every convolution and linear layer is spectrally normalised (a
    1-Lipschitz critic trains stably on the same optimiser step as the decoder)."""

    def __init__(self, channels: int, size: int, widths: Sequence[int], cond_dim: int, hidden: int = 64) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or size % 2 ** (len(widths) - 1):
            raise ValueError(f"critic widths {widths} need an image side ({size}) divisible by 2**(len - 1)")
        self.cond_dim = int(cond_dim)
        self.convs = ConvEncoder(channels + self.cond_dim, widths, blocks=1)
        bottom = size // 2 ** (len(widths) - 1)
        self.hidden = nn.Linear(widths[-1] * bottom**2, hidden)
        self.out = nn.Linear(hidden, 1)
        self.project = nn.Linear(self.cond_dim, hidden, bias=False) if self.cond_dim else None
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, (nn.Conv2d, nn.Linear)):
                    setattr(module, name, spectral_norm(child))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        inp = torch.cat([x, broadcast_cond(cond, x)], 1) if self.cond_dim else x
        h = F.leaky_relu(self.hidden(F.leaky_relu(self.convs(inp)[-1], 0.2).flatten(1)), 0.2)
        logit = self.out(h).squeeze(1)
        if self.project is not None:
            logit = logit + (self.project(cond) * h).sum(1)
        return logit
