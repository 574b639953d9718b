"""Contract cases for the hierarchical VAE: tiny untrained nets (see cases/vae.py for the tolerances)."""

from imcf.mechanisms.hvae import HierarchicalVAE
from tests.mechanisms.cases.vae import image_case

TINY = {"widths": [8, 8, 8], "latent_dims": [2, 2, 4], "cond_dim": 4}

CASES = [
    lambda: image_case(HierarchicalVAE, "hvae", (1, 32, 32), False, True, **TINY),
    lambda: image_case(HierarchicalVAE, "hvae", (1, 32, 32), False, False, **TINY),
    lambda: image_case(HierarchicalVAE, "hvae", (1, 32, 32), False, True, "exogenous", **TINY),
    lambda: image_case(HierarchicalVAE, "hvae", (3, 64, 64), False, True, **{**TINY, "blocks": [1, 2, 1]}),
    lambda: image_case(HierarchicalVAE, "hvae", (1, 32, 32), True, False, **TINY),
]
