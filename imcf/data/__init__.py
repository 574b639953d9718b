"""Datasets; importing this package registers every dataset in `imcf.registry.DATASETS`."""

from imcf.data import (
    celeba,  # noqa: F401
    faces,  # noqa: F401
    linear,  # noqa: F401
    morphomnist,  # noqa: F401
)
from imcf.data.base import SPLITS, CausalDataset

__all__ = ["CausalDataset", "SPLITS"]
