"""The released Morpho-MNIST files: loading small IDX/CSV fixtures, split handling, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from imcf.data import morphomnist as mm
from imcf.data.idx import read_idx, write_idx
from imcf.data.morphomnist.real import MorphoMNISTReal, expected_files
from imcf.registry import DATASETS


def write_fixture(d: Path, prefix: str, n: int, seed: int, intensity: bool = True) -> np.ndarray:
    """A small Morpho-MNIST-like file set: random strokes, labels, and a morphometrics CSV."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for k in range(n):
        r0, c0 = rng.integers(4, 10, 2)
        images[k, r0 : r0 + 14, c0 : c0 + 3] = rng.integers(120, 256)
    write_idx(d / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    table = {"index": np.arange(n), "thickness": mm.measure_batch(images, "uint8")["thickness"]}
    if intensity:
        table["intensity"] = mm.intensity(images)
    pd.DataFrame(table).to_csv(d / f"{prefix}-morpho.csv", index=False)
    return images


def test_idx_round_trip(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, a)
        assert np.array_equal(read_idx(tmp_path / name), a)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"xx")
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(tmp_path / "bad")


def test_loads_splits_from_fixture_files(tmp_path: Path) -> None:
    train_images = write_fixture(tmp_path, "train", 20, 0)
    write_fixture(tmp_path, "t10k", 6, 1, intensity=False)  # intensity measured when the CSV lacks it
    assert DATASETS["morphomnist_real"] is MorphoMNISTReal
    tr = MorphoMNISTReal(str(tmp_path), "train", data_dir=str(tmp_path), val_fraction=0.25)
    va = MorphoMNISTReal(str(tmp_path), "val", data_dir=str(tmp_path), val_fraction=0.25)
    te = MorphoMNISTReal(str(tmp_path), "test", data_dir=str(tmp_path))
    assert (len(tr), len(va), len(te)) == (15, 5, 6)
    assert not set(tr.source_index.tolist()) & set(va.source_index.tolist())
    item = tr[0]
    assert item["image"].shape == (1, 32, 32) and item["digit"].shape == (10,)
    assert item["thickness"].shape == (1,) and item["intensity"].shape == (1,)
    src = int(tr.source_index[0])
    expected = torch.from_numpy(mm.pad_to(train_images[src : src + 1]).astype(np.float32) / 127.5 - 1)
    assert torch.equal(item["image"], expected[0:1].reshape(1, 32, 32))
    assert float(te[0]["intensity"]) > 100
    assert tr.true_counterfactual(torch.arange(2), {"thickness": 2.0}) is None


def test_missing_and_inconsistent_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        MorphoMNISTReal(str(tmp_path), "train", data_dir=str(tmp_path))
    for name in expected_files("train"):
        assert name in str(err.value)
    write_fixture(tmp_path, "train", 10, 0)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(ValueError, match="7 labels for 10 images"):
        MorphoMNISTReal(str(tmp_path), "train", data_dir=str(tmp_path))
    write_fixture(tmp_path, "train", 10, 0)
    pd.DataFrame({"index": np.arange(9), "thickness": np.ones(9)}).to_csv(tmp_path / "train-morpho.csv", index=False)
    with pytest.raises(ValueError, match="9 rows for 10 images"):
        MorphoMNISTReal(str(tmp_path), "train", data_dir=str(tmp_path))


def test_released_files_get_the_predictor_free_measurements(tmp_path: Path) -> None:
    """The evaluator's `measured` metric reads the released images with the same morphometrics as the embedded
    set: the measurements of a stored image match its CSV row (made by the same morphometrics here)."""
    from imcf.evaluation import support
    from imcf.graph import CausalGraph

    write_fixture(tmp_path, "t10k", 6, 1)
    te = MorphoMNISTReal(str(tmp_path), "test", data_dir=str(tmp_path))
    graph = CausalGraph.from_dict(
        {
            "thickness": "continuous",
            "intensity": {"kind": "continuous", "parents": ["thickness"]},
            "digit": {"kind": "categorical", "num_classes": 10},
            "image": {"kind": "image", "shape": [1, 32, 32], "parents": ["thickness", "intensity", "digit"]},
        }
    )
    assert support(graph, te)["measured"] == ""
    images = torch.stack([te[i]["image"] for i in range(len(te))])
    got = te.measure(images)
    assert got["thickness"].shape == (6, 1)
    want = torch.stack([te[i]["thickness"] for i in range(len(te))])
    assert torch.allclose(got["thickness"], want, atol=0.05), (got["thickness"].ravel(), want.ravel())
    assert torch.allclose(got["intensity"], torch.stack([te[i]["intensity"] for i in range(len(te))]), atol=1.0)
