"""Contract cases for the conditional VAE: tiny untrained nets on 1x32x32 and 3x64x64 images.

With the residual kept, abduct -> predict is exact. Without it, an untrained decoder can be anywhere in
[-1, 1], so the stated tolerance is the full pixel range (2.0); the reconstruction quality of a trained
model is tested in tests/mechanisms/test_image_mechanisms.py.
"""

import torch

from imcf.graph import CausalGraph
from imcf.mechanisms.vae import ConditionalVAE
from tests.mechanisms.contract import ContractCase

TINY = {"latent_dim": 4, "widths": [8, 8, 16], "blocks": 1}


def image_case(
    cls, name: str, shape: tuple[int, int, int], root: bool, keep_residual: bool, latents: str = "fixed", **kw
):
    """A mechanism of family `cls` for node `image` with parents digit (categorical) and thickness."""
    nodes = {"thickness": "continuous", "digit": "categorical(10)"}
    parents = [] if root else ["thickness", "digit"]
    nodes["image"] = {"kind": "image", "shape": list(shape), "parents": parents}
    g = CausalGraph.from_dict(nodes)
    torch.manual_seed(0)
    mech = cls.from_graph(g, "image", abduction={"keep_residual": keep_residual, "latents": latents}, **kw)
    b = 4
    pa = {"thickness": torch.rand(b, 1) * 5 + 1, "digit": torch.nn.functional.one_hot(torch.arange(b), 10).float()}
    pa = {p: pa[p] for p in parents}
    mech.train()
    mech.loss(torch.rand(b, *shape) * 2 - 1, pa)  # fill the parent encoder's running statistics
    x = torch.rand(b, *shape) * 2 - 1
    tol = 1e-4 if keep_residual else 2.0
    return ContractCase(
        f"{name}[{shape}, root={root}, residual={keep_residual}, {latents}]", g, "image", mech, x, pa, tol
    )


CASES = [
    lambda: image_case(ConditionalVAE, "vae", (1, 32, 32), False, True, **TINY),
    lambda: image_case(ConditionalVAE, "vae", (1, 32, 32), False, False, **TINY),
    lambda: image_case(ConditionalVAE, "vae", (3, 64, 64), False, True, **{**TINY, "likelihood": "gaussian"}),
    lambda: image_case(ConditionalVAE, "vae", (1, 32, 32), True, True, **TINY),
]
