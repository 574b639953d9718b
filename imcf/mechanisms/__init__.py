"""Mechanism families; importing this package registers every family in `imcf.registry.MECHANISMS`."""

from imcf.mechanisms import linear_gaussian  # noqa: F401
from imcf.mechanisms.base import Mechanism, Noise

__all__ = ["Mechanism", "Noise"]
