"""The dataset contract: samples are dicts keyed by node name, plus `_index` and the exogenous `_u_<node>`."""

from __future__ import annotations

import numbers
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from imcf.config import ConfigError

SPLITS = ("train", "val", "test")


def whole_option(dataset: str, key: str, value: Any, minimum: int | None = None, optional: bool = False) -> int | None:
    """A dataset option that must be a whole number (at least `minimum`; None allowed when `optional`): the
    value as an int, or a ConfigError naming `dataset.options.<key>` and what it got. 2.0 passes as 2; 2.5,
    "abc" and booleans are refused rather than truncated or read as 0/1."""
    if value is None and optional:
        return None
    whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not whole or (minimum is not None and value < minimum):
        floor = "" if minimum is None else f" >= {minimum}"
        none = " (or null)" if optional else ""
        raise ConfigError(f"{dataset}: dataset.options.{key} must be a whole number{floor}{none}, got {value!r}")
    return int(value)


def split_size(dataset: str, sizes: Mapping[str, Any], split: str) -> int:
    """The number of rows `sizes` (the dataset's `sizes` option) gives `split`: a whole number >= 1, or a
    ConfigError naming `dataset.options.sizes.<split>`."""
    return int(whole_option(dataset, f"sizes.{split}", sizes.get(split), minimum=1))


class CausalDataset(Dataset):
    """A dataset of one split. `__getitem__` returns {node: tensor without batch dim, "_index": long, ...}.

    Images are float (C, H, W) in [-1, 1]; continuous and binary attributes (1,); categorical (K,) one-hot.
    Embedded (synthetic) datasets also return their exogenous noise as `_u_<node>` and implement
    `true_counterfactual`, which re-renders the same unit under an intervention.
    Constructor convention: `Cls(root, split, **options)` with split in SPLITS.
    """

    #: name of the graph config (configs/graph/<name>.yaml) this dataset follows by default
    default_graph: str = ""
    #: True when `true_counterfactual` is available
    has_ground_truth: bool = False
    #: True when `measure` reads attributes off images without a learned model (e.g. morphometrics)
    has_measurements: bool = False

    def __init__(self, root: str, split: str) -> None:
        self.root = root
        self.split = check_split(split)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, i: int) -> dict[str, Tensor]: ...

    def true_counterfactual(self, index: Tensor, do: Mapping[str, Any]) -> dict[str, Tensor] | None:
        """Ground-truth counterfactual batch for dataset rows `index` under `do`, or None if unknown."""
        return None

    def measure(self, images: Tensor) -> dict[str, Tensor]:
        """Predictor-free measurements of a batch of images in this dataset's format: {attribute: (B, 1)}.
        Datasets that have them set `has_measurements`; the evaluator's `measured` metric uses them."""
        raise NotImplementedError(f"{type(self).__name__} has no predictor-free measurements")


def check_split(split: str) -> str:
    """Validate a split name."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def sample_mismatch(
    item: Mapping[str, Tensor], shapes: Mapping[str, Sequence[int] | None]
) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """What one sample lacks against `shapes` ({node: per-sample shape, or None for any}, a graph's): the
    nodes it does not provide, and {node: the shape it gives} for those it gives in another shape."""
    missing = [v for v in shapes if v not in item]
    wrong = {
        v: tuple(item[v].shape)
        for v, want in shapes.items()
        if v in item and want is not None and tuple(item[v].shape) != tuple(want)
    }
    return missing, wrong


def stack_batch(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Collate a list of sample dicts into a batch dict."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
