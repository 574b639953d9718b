"""Measures of statistical dependence between a latent code and a node's parents: kernel and adversarial.

The normalised Hilbert-Schmidt independence criterion (HSIC; Gretton et al. 2005, used to keep nuisance
information out of VAE latents by Lopez et al. 2018, "Information Constraints on Auto-Encoding Variational
Bayes") is 0 for independent samples and 1 for a deterministic one-to-one relation. Penalising it between
the abducted latent and each parent keeps the parents' information out of the exogenous noise, so the
decoder must take it from the parents, and a counterfactual parent value changes the image.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imcf.graph import NodeKind


def gaussian_gram(x: Tensor) -> Tensor:
    """Gaussian kernel matrix (B, B) of the rows of `x` (B, D), bandwidth by the median heuristic."""
    x = x.reshape(x.shape[0], -1).float()
    d2 = torch.cdist(x, x).pow(2)
    off = d2[~torch.eye(len(x), dtype=torch.bool, device=x.device)]
    scale = off.detach().median().clamp(min=1e-12)
    return torch.exp(-d2 / scale)


def _centred(k: Tensor) -> Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def normalised_hsic(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) of two kernel matrices: in [0, 1], 0 when independent."""
    kc, lc = _centred(k), _centred(l)
    cross = (kc * lc).sum()
    norm = ((kc * kc).sum() * (lc * lc).sum()).clamp(min=1e-24).sqrt()
    return cross / norm


def dependence(code: Tensor | list[Tensor], parents: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Normalised HSIC between a latent code (one tensor or a list of levels, batch first) and each parent."""
    if isinstance(code, (list, tuple)):
        code = torch.cat([c.reshape(c.shape[0], -1) for c in code], 1)
    if code.shape[0] < 4:
        raise ValueError(f"dependence needs a batch of at least 4 rows, got {code.shape[0]}")
    k = gaussian_gram(code)
    return {p: normalised_hsic(k, gaussian_gram(v.detach())) for p, v in parents.items()}


class ParentAdversary(nn.Module):
    """A reader that learns each parent from a latent code, and the confusion term that makes the code unreadable.

    The reader (a one-hidden-layer MLP on the flattened code, all levels concatenated) is trained on the
    detached code to predict each parent: cross-entropy for binary and categorical parents, squared error of the
    batch-standardised value for continuous ones. The encoder gets the confusion of the reader, whose weights it
    cannot move: the KL from the batch's class frequencies to the reader's prediction (discrete parents), the
    reader's squared prediction of the standardised value (continuous ones); both are 0 when the code tells the
    reader nothing (Alvi et al. 2018, "Turning a Blind Eye"). A reversed gradient instead lets a code escape by
    fooling today's reader while a fresh one still reads the parent; a kernel test on thousands of concatenated
    latent dimensions misses a parent that one level keeps, which a trained reader finds.
    """

    def __init__(self, code_dim: int, parent_kinds: Mapping[str, NodeKind], hidden: int = 128) -> None:
        super().__init__()
        self.parent_kinds = dict(parent_kinds)
        self.out_dims = {p: k.num_classes if k.name == "categorical" else 1 for p, k in self.parent_kinds.items()}
        # one hidden layer: a deeper reader, trained in the same step as the encoder, chased it without settling
        self.net = nn.Sequential(nn.Linear(code_dim, hidden), nn.GELU(), nn.Linear(hidden, sum(self.out_dims.values())))

    def _split(self, out: Tensor) -> dict[str, Tensor]:
        return dict(zip(self.parent_kinds, out.split(list(self.out_dims.values()), 1)))

    def forward(
        self, code: Tensor | list[Tensor], parents: Mapping[str, Tensor], weight: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(the term to add to a loss: value 0, the reader's loss and `weight` times the confusion as gradients;
        {parent: the reader's loss}, to log: at chance, log K for K classes, 1 for continuous parents)."""
        if isinstance(code, (list, tuple)):
            code = torch.cat([c.reshape(c.shape[0], -1) for c in code], 1)
        code = code.reshape(code.shape[0], -1)
        frozen = {n: w.detach() for n, w in self.net.named_parameters()}
        read = self._split(self.net(code.detach()))
        seen = self._split(torch.func.functional_call(self.net, frozen, (code,)))
        losses, confusion = {}, []
        for p, kind in self.parent_kinds.items():
            v = parents[p].detach().reshape(len(code), -1).to(code.dtype)
            if kind.name == "continuous":
                losses[p] = F.mse_loss(read[p], (v - v.mean(0)) / v.std(0).clamp(min=1e-6))
                confusion.append(seen[p].pow(2).mean())
                continue
            if kind.name == "binary":  # as two classes
                v = torch.cat([1 - v, v], 1)
                read[p], seen[p] = (torch.cat([torch.zeros_like(t), t], 1) for t in (read[p], seen[p]))
            losses[p] = F.cross_entropy(read[p], v.argmax(1))
            freq = v.mean(0, keepdim=True)
            confusion.append((freq * (freq.clamp(min=1e-12).log() - seen[p].log_softmax(1))).sum(1).mean())
        term = sum(losses.values()) + weight * sum(confusion)
        return term - term.detach(), {p: v.detach() for p, v in losses.items()}
