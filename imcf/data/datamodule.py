"""One LightningDataModule for every registered dataset."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from imcf.config import ConfigError
from imcf.data.base import CausalDataset, sample_mismatch
from imcf.registry import DATASETS


def build_dataset(name: str, root: str, split: str, **options: Any) -> CausalDataset:
    """Instantiate the registered dataset `name` for one split; an unknown name, an option the dataset does not
    take or a value it refuses is a ConfigError naming `dataset.name` / `dataset.options`."""
    import imcf.data  # noqa: F401  (fills the registry)

    if name not in DATASETS:
        raise ConfigError(f"dataset.name: unknown dataset {name!r}; registered: {sorted(DATASETS)}")
    cls = DATASETS[name]
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        takes = [k for k, p in params.items() if k not in ("self", "root", "split") and p.kind is not p.VAR_POSITIONAL]
        unknown = sorted(set(options) - set(takes))
        if unknown:
            raise ConfigError(f"dataset.options: {unknown} are not options of dataset {name!r}; it takes {takes}")
    try:
        return cls(root=root, split=split, **options)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a value the dataset refuses (its own message says which)
        raise ConfigError(f"dataset.options of {name!r} ({split} split): {e}") from e


class EpochSeededSampler(Sampler[int]):
    """Random permutation that depends only on (seed, epoch): a resumed run sees the same batches."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


class CausalDataModule(L.LightningDataModule):
    """Train/val/test loaders of a registered dataset; batches are dicts keyed by node."""

    def __init__(
        self,
        name: str,
        root: str = "data",
        batch_size: int = 64,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        shuffle_seed: int = 0,
        nodes: Sequence[str] | None = None,
        shapes: Mapping[str, Sequence[int]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.nodes = list(nodes) if nodes is not None else None  # the graph's: each split must provide them
        self.shapes = {n: tuple(int(d) for d in s) for n, s in (shapes or {}).items()}  # ... with these shapes
        self.shuffle_seed = shuffle_seed
        self.name, self.root, self.options = name, root, options
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self._splits: dict[str, CausalDataset] = {}

    def dataset(self, split: str) -> CausalDataset:
        """The dataset of one split (built once)."""
        if split not in self._splits:
            data = build_dataset(self.name, self.root, split, **self.options)
            if len(data):
                missing, wrong = sample_mismatch(data[0], {**dict.fromkeys(self.nodes or ()), **self.shapes})
                if missing:
                    have = [k for k in data[0] if not k.startswith("_")]
                    hint = f" (its own graph: graph={data.default_graph})" if data.default_graph else ""
                    raise ConfigError(
                        f"graph node(s) {missing} are not variables of dataset {self.name!r}, which provides "
                        f"{have}: pick a graph that matches the dataset{hint}"
                    )
                if wrong:
                    node, got = next(iter(wrong.items()))
                    raise ConfigError(
                        f"graph node {node!r} has shape {list(self.shapes[node])} but dataset {self.name!r} gives "
                        f"{list(got)} per sample: make graph.nodes.{node} and the dataset's options agree"
                    )
            self._splits[split] = data
        return self._splits[split]

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        data = self.dataset(split)
        return DataLoader(
            data,
            batch_size=batch_size,
            sampler=EpochSeededSampler(len(data), self.shuffle_seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)
