"""Contract cases for the conditional BiGAN: tiny untrained nets on 1x32x32 and 3x64x64 images
(tolerances as for the VAE, see cases/vae.py: exact with the residual, the full pixel range without)."""

from imcf.mechanisms.gan import ConditionalGAN
from tests.mechanisms.cases.vae import image_case

TINY = {"latent_dim": 4, "widths": [8, 8, 16], "disc_hidden": 16}

CASES = [
    lambda: image_case(ConditionalGAN, "gan", (1, 32, 32), False, True, **TINY),
    lambda: image_case(ConditionalGAN, "gan", (1, 32, 32), False, False, "exogenous", **{**TINY, "loss": "hinge"}),
    lambda: image_case(ConditionalGAN, "gan", (3, 64, 64), False, True, **{**TINY, "regularizer": "spectral_norm"}),
    lambda: image_case(ConditionalGAN, "gan", (1, 32, 32), True, True, **TINY),
]
