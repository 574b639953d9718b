"""Embedded Morpho-MNIST: SCM statistics, cache integrity, ground-truth counterfactuals, configs, datamodule."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from imcf.data import morphomnist as mm
from imcf.data.datamodule import CausalDataModule, build_dataset
from imcf.data.morphomnist.dataset import MorphoMNIST, clear_memory_cache, load_cache
from imcf.graph import CausalGraph
from imcf.io import read_yaml
from imcf.registry import DATASETS

REPO = Path(__file__).resolve().parents[2]
SMALL = {"num_samples": 160, "upscale": 4, "workers": 2, "seed": 0}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mmroot")


@pytest.fixture(scope="module")
def train(root: Path) -> MorphoMNIST:
    return MorphoMNIST(str(root), "train", **SMALL)


def test_registered_and_items_follow_the_contract(train: MorphoMNIST) -> None:
    assert DATASETS["morphomnist"] is MorphoMNIST
    assert train.meta["split_sizes"] == {"train": 128, "val": 16, "test": 16}
    item = train[3]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert float(item["image"].min()) == -1.0  # black background
    for k in ("thickness", "intensity", "_u_thickness", "_u_intensity", "_measured_thickness", "_measured_intensity"):
        assert item[k].shape == (1,), k
    assert item["digit"].shape == (10,) and float(item["digit"].sum()) == 1.0
    assert item["_u_digit"].dtype == torch.long and item["_index"] == 3
    assert 0.5 < float(item["thickness"]) < 10 and 64 <= float(item["intensity"]) <= 255
    # stored noise reproduces the stored attributes through the true mechanisms
    t = mm.thickness_mechanism(train.table["u_thickness"].to_numpy())
    np.testing.assert_allclose(t, train.table["thickness"].to_numpy())
    i = mm.intensity_mechanism(t, train.table["u_intensity"].to_numpy())
    np.testing.assert_allclose(i, train.table["intensity"].to_numpy())


def test_scm_statistics_of_the_generated_set(root: Path, train: MorphoMNIST) -> None:
    _, table, _ = load_cache(train.cache_dir)
    assert table["thickness"].mean() == pytest.approx(2.5, abs=0.15)  # 0.5 + E[Gamma(10, rate 5)]
    assert np.corrcoef(table["thickness"], table["intensity"])[0, 1] > 0.7  # intensity rises with thickness
    assert np.corrcoef(table["measured_thickness"], table["measured_intensity"])[0, 1] > 0.7
    # the images carry the attributes: measured on the stored images, close to the targets
    measured = mm.measure_batch(train.arrays["image"], "uint8")
    np.testing.assert_allclose(measured["thickness"], train.table["measured_thickness"], rtol=1e-6)
    assert np.mean(np.abs(measured["thickness"] - train.table["thickness"])) < 0.15
    assert np.mean(np.abs(measured["intensity"] - train.table["intensity"])) < 1.5
    assert set(table["split"]) == {"train", "val", "test"}
    assert len(set(table["base_index"])) == len(table)  # each unit its own real digit


def test_true_counterfactual_with_factual_thickness_reproduces_the_factual_image(train: MorphoMNIST) -> None:
    idx = torch.arange(6)
    batch = torch.utils.data.default_collate([train[i] for i in range(6)])
    cf = train.true_counterfactual(idx, {"thickness": batch["thickness"]})  # float32 (B, 1) values
    assert torch.equal(cf["image"], batch["image"])
    assert torch.allclose(cf["intensity"], batch["intensity"])
    assert set(cf) >= {"thickness", "intensity", "digit", "image", "_u_thickness", "_u_intensity", "_index"}
    cf = train.true_counterfactual(idx, {})
    assert torch.equal(cf["image"], batch["image"])


def test_do_thickness_rerenders_and_rederives_intensity(train: MorphoMNIST) -> None:
    idx = torch.tensor([0, 5, 9, 11, 20, 33, 40, 77])
    target = torch.linspace(1.5, 5.0, len(idx))
    cf = train.true_counterfactual(idx, {"thickness": target})  # (B,) tensor
    assert cf["image"].shape == (8, 1, 32, 32)
    torch.testing.assert_close(cf["thickness"][:, 0], target)
    u_i = train.table["u_intensity"].to_numpy()[idx.numpy()]
    expect_i = mm.intensity_mechanism(target.double().numpy(), u_i)
    np.testing.assert_allclose(cf["intensity"][:, 0].numpy(), expect_i, rtol=1e-5)
    measured = mm.measure_batch(cf["image"].numpy(), "signed")
    np.testing.assert_allclose(measured["thickness"], cf["_measured_thickness"][:, 0].numpy(), rtol=1e-5)
    assert np.mean(np.abs(measured["thickness"] - target.numpy())) < 0.2
    assert torch.equal(cf["digit"], torch.stack([train[int(i)]["digit"] for i in idx]))


def test_do_intensity_keeps_the_stroke(train: MorphoMNIST) -> None:
    idx = torch.arange(4)
    cf = train.true_counterfactual(idx, {"intensity": 100.0})
    measured = mm.measure_batch(cf["image"].numpy(), "signed")
    assert np.all(np.abs(measured["intensity"] - 100.0) <= 1.0)
    torch.testing.assert_close(cf["thickness"], torch.stack([train[i]["thickness"] for i in range(4)]))
    # intensity only rescales grey levels: the stroke stays (up to rounding at the threshold)
    fact = mm.binarise(train.arrays["image"][:4])
    new = mm.binarise(mm.to_uint8(cf["image"].numpy(), "signed"))
    assert (fact & new).sum() / (fact | new).sum() > 0.95
    np.testing.assert_allclose(measured["thickness"], train.table["measured_thickness"][:4], atol=0.1)


def test_do_validation_and_digit_has_no_ground_truth(train: MorphoMNIST) -> None:
    idx = torch.arange(3)
    assert train.true_counterfactual(idx, {"digit": 4}) is None
    with pytest.raises(KeyError, match="colour"):
        train.true_counterfactual(idx, {"colour": 1.0})
    with pytest.raises(ValueError, match="do\\(thickness\\)"):
        train.true_counterfactual(idx, {"thickness": torch.ones(5)})
    with pytest.raises(IndexError):
        train.true_counterfactual(torch.tensor([10_000]), {"thickness": 2.0})
    cf = train.true_counterfactual(idx, {"thickness": torch.full((3, 1), 3.0), "intensity": np.full(3, 200.0)})
    assert torch.all(cf["intensity"] == 200.0) and torch.all(cf["thickness"] == 3.0)


def test_cache_reload_key_and_corruption(root: Path, train: MorphoMNIST) -> None:
    tiny = {"num_samples": 12, "upscale": 4, "workers": 1, "seed": 5}
    a = MorphoMNIST(str(root), "train", **tiny)
    assert a.cache_dir != train.cache_dir  # options are part of the key
    images = a.arrays["image"].copy()
    clear_memory_cache()
    b = MorphoMNIST(str(root), "train", **tiny)  # from disk
    assert np.array_equal(b.arrays["image"], images)
    npz = a.cache_dir / "images.npz"
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    clear_memory_cache()
    with pytest.raises(Exception, match="checksum"):
        load_cache(a.cache_dir)
    c = MorphoMNIST(str(root), "train", **tiny)  # detected and regenerated, deterministically
    assert np.array_equal(c.arrays["image"], images)
    load_cache(a.cache_dir)  # valid again


def test_datamodule_batches(root: Path, train: MorphoMNIST) -> None:
    dm = CausalDataModule("morphomnist", root=str(root), batch_size=16, **SMALL)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 1, 32, 32)
    assert batch["thickness"].shape == (16, 1) and batch["digit"].shape == (16, 10)
    assert len(dm.dataset("val")) == 16 and len(dm.dataset("test")) == 16
    assert isinstance(build_dataset("morphomnist", str(root), "test", **SMALL), MorphoMNIST)


@pytest.mark.parametrize("name", ["morphomnist", "morphomnist_confounded"])
def test_graph_configs_match_the_dataset(name: str) -> None:
    g = CausalGraph.from_dict(read_yaml(REPO / "configs" / "graph" / f"{name}.yaml"))
    assert list(g.nodes) == ["thickness", "intensity", "digit", "image"]
    assert g.parents("intensity") == ("thickness",)
    assert set(g.parents("image")) == {"thickness", "intensity", "digit"}
    assert g.kinds["image"].shape == (1, 32, 32) and g.kinds["digit"].num_classes == 10
    components = {frozenset(c) for c in g.c_components()}
    assert (frozenset({"thickness", "intensity"}) in components) == (name == "morphomnist_confounded")


@pytest.mark.parametrize("name", ["morphomnist", "morphomnist_real"])
def test_dataset_configs_name_real_options(name: str) -> None:
    cfg = read_yaml(REPO / "configs" / "dataset" / f"{name}.yaml")
    cls = DATASETS[cfg["name"]]
    params = inspect.signature(cls.__init__).parameters
    unknown = [k for k in cfg.get("options") or {} if k not in params]
    assert not unknown, f"{name}.yaml options not accepted by {cls.__name__}: {unknown}"
    assert cls.default_graph == "morphomnist"
