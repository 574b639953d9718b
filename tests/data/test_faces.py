"""Synthetic faces: the SCM's probabilities, exact re-rendering, true counterfactuals, the cache, the batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from imcf.data.datamodule import CausalDataModule
from imcf.data.faces import (
    ATTRIBUTES,
    BALD_PROB,
    BEARD_PROB,
    P_EYEGLASSES,
    P_MALE,
    P_SMILING,
    P_YOUNG,
    STYLE_FACTORS,
    FacesDataset,
    derive_attributes,
    render_faces,
    sample_exogenous,
)

REPO = Path(__file__).resolve().parents[2]
SIZES = {"train": 240, "val": 60, "test": 120}


@pytest.fixture(scope="module")
def faces_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faces")


@pytest.fixture(scope="module")
def train(faces_root: Path) -> FacesDataset:
    return FacesDataset(str(faces_root), "train", sizes=SIZES, seed=3)


def _within(freq: float, p: float, n: int, z: float = 4.5) -> bool:
    return abs(freq - p) <= z * np.sqrt(p * (1 - p) / n) + 1e-12


def test_frequencies_and_conditionals_match_the_scm():
    n = 200_000
    attrs = derive_attributes(sample_exogenous(n, seed=11))
    for a, p in {"young": P_YOUNG, "male": P_MALE, "smiling": P_SMILING, "eyeglasses": P_EYEGLASSES}.items():
        assert _within(attrs[a].mean(), p, n), (a, attrs[a].mean(), p)
    for child, table in {"beard": BEARD_PROB, "bald": BALD_PROB}.items():
        for (y, m), p in table.items():
            rows = (attrs["young"] == y) & (attrs["male"] == m)
            assert _within(attrs[child][rows].mean(), p, int(rows.sum())), (child, y, m)
    # beard and bald are independent given their parents; smiling is independent of everything else
    rows = (attrs["young"] == 0) & (attrs["male"] == 1)
    joint = (attrs["beard"][rows] & attrs["bald"][rows]).mean()
    assert _within(joint, BEARD_PROB[(0, 1)] * BALD_PROB[(0, 1)], int(rows.sum()))
    assert _within(attrs["smiling"][attrs["beard"] == 1].mean(), P_SMILING, int(attrs["beard"].sum()))


def test_generated_set_follows_its_stored_noise(train: FacesDataset):
    u = {a: train.u[a] for a in ATTRIBUTES}
    again = derive_attributes(u)
    for a in ATTRIBUTES:
        assert np.array_equal(again[a], train.attributes[a].numpy().astype(np.uint8)), a
    # a generated set's frequencies agree with the SCM within sampling error too
    n = len(train)
    assert _within(train.attributes["young"].mean().item(), P_YOUNG, n)
    assert _within(train.attributes["eyeglasses"].mean().item(), P_EYEGLASSES, n)


def test_batch_format(train: FacesDataset):
    item = train[5]
    for a in ATTRIBUTES:
        assert item[a].shape == (1,) and item[a].dtype == torch.float32 and item[a].item() in (0.0, 1.0)
        assert item[f"_u_{a}"].shape == (1,) and 0 <= item[f"_u_{a}"].item() <= 1
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1 and item["image"].std() > 0.1
    assert item["_u_image"].shape == (len(STYLE_FACTORS),) and item["_index"].item() == 5
    dm = CausalDataModule("faces", root=train.root, batch_size=16, sizes=SIZES, seed=3)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (16, 3, 64, 64) and batch["beard"].shape == (16, 1)


def test_do_factual_returns_the_factual_image_exactly(train: FacesDataset):
    idx = torch.arange(0, 40)
    factual = torch.stack([train[i]["image"] for i in idx.tolist()])
    for a in ATTRIBUTES:
        cf = train.true_counterfactual(idx, {a: train.attributes[a][idx].reshape(-1, 1)})
        assert torch.equal(cf["image"], factual), a
        for b in ATTRIBUTES:
            assert torch.equal(cf[b].reshape(-1), train.attributes[b][idx]), (a, b)
    assert torch.equal(train.true_counterfactual(idx, {})["image"], factual)


def test_true_counterfactual_rederives_descendants_and_changes_the_image(train: FacesDataset):
    idx = torch.arange(120)
    factual = torch.stack([train[i]["image"] for i in idx.tolist()])
    for a in ATTRIBUTES:
        flipped = 1 - train.attributes[a][idx]
        cf = train.true_counterfactual(idx, {a: flipped})
        assert torch.equal(cf[a].reshape(-1), flipped)
        diff = (cf["image"] - factual).abs()
        changed = diff.flatten(1).amax(1) > 0.3
        assert changed.all(), f"do({a}) left {int((~changed).sum())} images unchanged"
    cf = train.true_counterfactual(idx, {"young": 0, "male": 1})
    expect_beard = train.u["beard"][:120] < BEARD_PROB[(0, 1)]
    expect_bald = train.u["bald"][:120] < BALD_PROB[(0, 1)]
    assert np.array_equal(cf["beard"].reshape(-1).numpy().astype(bool), expect_beard)
    assert np.array_equal(cf["bald"].reshape(-1).numpy().astype(bool), expect_bald)
    for a in ("smiling", "eyeglasses"):  # non-descendants keep their factual values
        assert torch.equal(cf[a].reshape(-1), train.attributes[a][idx])


def test_cache_is_reused_keyed_by_options_and_checked(faces_root: Path, train: FacesDataset):
    again = FacesDataset(str(faces_root), "train", sizes=SIZES, seed=3)
    assert again.cache_dir == train.cache_dir and torch.equal(again.images, train.images)
    assert set(p.name for p in train.cache_dir.iterdir()) == {"images.npz", "table.csv", "manifest.json"}
    other = FacesDataset(str(faces_root), "val", sizes=SIZES, seed=4, fixed={"eyeglasses": 0})
    assert other.cache_dir != train.cache_dir and other.attributes["eyeglasses"].sum() == 0
    csv = other.cache_dir / "table.csv"
    csv.write_text(csv.read_text().replace("\n1,", "\n7,", 1))
    with pytest.warns(UserWarning, match="checksum"):
        redone = FacesDataset(str(faces_root), "val", sizes=SIZES, seed=4, fixed={"eyeglasses": 0})
    assert torch.equal(redone.images, other.images)
    meta = json.loads((other.cache_dir / "manifest.json").read_text())
    assert meta["options"]["fixed"] == {"eyeglasses": 0} and set(meta["sha256"]) == {"images.npz", "table.csv"}


def test_parallel_rendering_is_identical_and_reports_progress(capsys):
    u = sample_exogenous(520, seed=5)
    attrs = derive_attributes(u)
    a = np.stack([attrs[k] for k in ATTRIBUTES], 1)
    serial = render_faces(a, u["image"], 64, workers=1)
    assert capsys.readouterr().out == ""
    assert np.array_equal(render_faces(a, u["image"], 64, workers=2, progress="faces train"), serial)
    lines = capsys.readouterr().out.strip().splitlines()
    assert 1 < len(lines) <= 10 and lines[-1] == "[imcf] faces train: rendered 520/520 faces"


def test_graph_configs_and_bad_options(faces_root: Path):
    for name in ("faces_simple", "faces_complex"):
        spec = yaml.safe_load((REPO / f"configs/graph/{name}.yaml").read_text())
        FacesDataset(str(faces_root), "val", sizes=SIZES, seed=3, graph=spec)
    spec = yaml.safe_load((REPO / "configs/graph/celeba_simple.yaml").read_text())
    with pytest.raises(ValueError, match="'Smiling'.*not a binary faces attribute"):
        FacesDataset(str(faces_root), "val", sizes=SIZES, graph=spec)
    with pytest.raises(KeyError, match="unknown faces attributes \\['moustache'\\]"):
        FacesDataset(str(faces_root), "val", sizes=SIZES, fixed={"moustache": 1})
    with pytest.raises(ValueError, match="do\\(beard\\)"):
        derive_attributes(sample_exogenous(3, 0), {"beard": 2})


@pytest.mark.slow
def test_every_attribute_is_visible_to_a_small_classifier(tmp_path: Path):
    """A small CNN trained for about a minute reaches F1 >= 0.95 on every attribute (benchmark, quick mode)."""
    out = tmp_path / "faces_data.json"
    cmd = [
        sys.executable,
        str(REPO / "benchmarks/faces_data.py"),
        "--quick",
        "--root",
        str(tmp_path),
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, cwd=REPO)
    f1 = json.loads(out.read_text())["classifier"]["f1"]
    assert set(f1) == set(ATTRIBUTES)
    assert min(f1.values()) >= 0.95, f1
