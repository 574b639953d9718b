"""The released Morpho-MNIST files (Castro et al. 2019; Pawlowski et al. 2020) as a dataset without ground truth.

Expected under `data_dir`, for prefix `train` (train and val splits) and `t10k` (test split):
`<prefix>-images-idx3-ubyte.gz`, `<prefix>-labels-idx1-ubyte.gz` (gzip or raw) and `<prefix>-morpho.csv`
with at least `index` and `thickness` columns (and `intensity`; when absent it is measured from the images
with the Morpho-MNIST definition). Images are zero-padded to 32 x 32 and scaled to [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from imcf.data.base import CausalDataset
from imcf.data.idx import read_idx
from imcf.data.morphomnist.dataset import Morphometrics
from imcf.data.morphomnist.measure import intensity as stroke_intensity
from imcf.data.morphomnist.scm import pad_to
from imcf.io import MissingFileError
from imcf.registry import DATASETS

PREFIX = {"train": "train", "val": "train", "test": "t10k"}


def expected_files(prefix: str) -> list[str]:
    """File names a Morpho-MNIST directory holds for one prefix (train or t10k)."""
    return [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz", f"{prefix}-morpho.csv"]


def load_morphomnist_files(data_dir: str | Path, prefix: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(images (N, 28, 28) uint8, labels (N,), morphometrics table) of one prefix, checked for agreement."""
    d = Path(data_dir)
    names = expected_files(prefix)
    paths = []
    for name in names:
        p = d / name
        if not p.is_file() and name.endswith(".gz") and (d / name[:-3]).is_file():
            p = d / name[:-3]
        paths.append(p)
    missing = [n for n, p in zip(names, paths) if not p.is_file()]
    if missing:
        raise MissingFileError(
            f"Morpho-MNIST directory {d} lacks {missing}; it must hold {names} (see datasets/morphomnist/README.md)"
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    table = pd.read_csv(paths[2])
    if images.ndim != 3 or images.shape[1] > 32 or images.shape[2] > 32:
        raise ValueError(f"{paths[0]}: expected (N, 28, 28) images, got shape {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{paths[1]}: {labels.shape[0]} labels for {images.shape[0]} images in {paths[0]}")
    if len(table) != images.shape[0]:
        raise ValueError(f"{paths[2]}: {len(table)} rows for {images.shape[0]} images in {paths[0]}")
    for col in ("index", "thickness"):
        if col not in table.columns:
            raise ValueError(f"{paths[2]} has no {col!r} column (columns: {list(table.columns)})")
    if not np.array_equal(table["index"].to_numpy(), np.arange(len(table))):
        table = table.sort_values("index").reset_index(drop=True)
        if not np.array_equal(table["index"].to_numpy(), np.arange(len(table))):
            raise ValueError(f"{paths[2]}: 'index' is not a permutation of 0..{len(table) - 1}")
    if "intensity" not in table.columns:
        table["intensity"] = stroke_intensity(images)
    return images, labels.astype(np.int64), table


@DATASETS.register("morphomnist_real")
class MorphoMNISTReal(Morphometrics, CausalDataset):
    """Released Morpho-MNIST files; val is a fixed `val_fraction` of the train files (drawn with `seed`)."""

    default_graph = "morphomnist"
    has_ground_truth = False

    def __init__(
        self,
        root: str = "data",
        split: str = "train",
        data_dir: str | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        max_samples: int | None = None,
    ) -> None:
        super().__init__(root, split)
        directory = Path(data_dir) if data_dir else Path(root) / "morphomnist_real"
        images, labels, table = load_morphomnist_files(directory, PREFIX[split])
        rows = np.arange(images.shape[0])
        if split != "test":
            order = np.random.default_rng(seed).permutation(images.shape[0])
            n_val = int(round(images.shape[0] * val_fraction))
            rows = np.sort(order[:n_val] if split == "val" else order[n_val:])
        if max_samples is not None:
            rows = rows[: int(max_samples)]
        f32 = torch.float32
        padded = pad_to(images[rows], 32)
        self.source_index = torch.as_tensor(rows, dtype=torch.long)
        self._values = {
            "thickness": torch.tensor(table["thickness"].to_numpy()[rows], dtype=f32)[:, None],
            "intensity": torch.tensor(table["intensity"].to_numpy()[rows], dtype=f32)[:, None],
            "digit": torch.nn.functional.one_hot(torch.as_tensor(labels[rows]), 10).to(f32),
            "image": torch.from_numpy(padded.astype(np.float32) / 127.5 - 1.0)[:, None],
        }

    def __len__(self) -> int:
        return self._values["image"].shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {k: v[i] for k, v in self._values.items()}
        item["_index"] = torch.tensor(i, dtype=torch.long)
        return item
