"""Mechanism families; importing this package registers every family in `imcf.registry.MECHANISMS`."""

from imcf.mechanisms import (
    ddim,  # noqa: F401
    discrete,  # noqa: F401
    flow,  # noqa: F401
    gan,  # noqa: F401
    hvae,  # noqa: F401
    linear_gaussian,  # noqa: F401
    vae,  # noqa: F401
)
from imcf.mechanisms.base import Mechanism, Noise

__all__ = ["Mechanism", "Noise"]
