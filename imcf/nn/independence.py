"""Kernel measures of statistical dependence between a latent code and a node's parents.

The normalised Hilbert-Schmidt independence criterion (HSIC; Gretton et al. 2005, used to keep nuisance
information out of VAE latents by Lopez et al. 2018, "Information Constraints on Auto-Encoding Variational
Bayes") is 0 for independent samples and 1 for a deterministic one-to-one relation. Penalising it between
the abducted latent and each parent keeps the parents' information out of the exogenous noise, so the
decoder must take it from the parents, and a counterfactual parent value changes the image.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


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
