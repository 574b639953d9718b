"""Slow: a few minutes of CPU training of each latent image family (its configs/mechanism/image/<family>.yaml)
on embedded Morpho-MNIST gives counterfactuals under do(thickness) whose measured thickness is closer to the
target than the factual thickness is, for >= 80% of 100 test digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import imcf.mechanisms  # noqa: F401
from imcf.data import morphomnist as mm
from imcf.data.morphomnist_dataset import MorphoMNIST
from imcf.graph import CausalGraph
from imcf.io import read_yaml
from imcf.registry import MECHANISMS
from tests.mechanisms.test_image_mechanisms import train

ROOT = Path(__file__).resolve().parents[2]
PARENTS = ("thickness", "intensity", "digit")


@pytest.fixture(scope="module")
def morpho(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    train_set = MorphoMNIST(root=root, split="train", num_samples=1500)
    test_set = MorphoMNIST(root=root, split="test", num_samples=1500)
    return train_set._values, test_set._values


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vae", "hvae"])
def test_counterfactual_thickness_moves_toward_target(morpho, family):
    tr, te = morpho
    torch.set_num_threads(1)
    graph = CausalGraph.from_yaml(ROOT / "configs/graph/morphomnist.yaml")
    spec = read_yaml(ROOT / f"configs/mechanism/image/{family}.yaml")
    config = {**spec["config"], "parent_ranges": {"thickness": [0.5, 6.5], "intensity": [64.0, 255.0]}}
    torch.manual_seed(0)
    mech = MECHANISMS[spec["family"]].from_graph(graph, "image", **config)
    train(mech, tr["image"], {p: tr[p] for p in PARENTS}, steps=1500, batch_size=64, lr=1e-3)

    n = 100
    fact = {k: v[:n] for k, v in te.items()}
    t = fact["thickness"][:, 0].numpy().astype(np.float64)
    target = np.where(t < 2.5, t + 2.0, t - 1.5).clip(1.0, 6.0)
    u_i = fact["_u_intensity"][:, 0].numpy().astype(np.float64)
    cf_parents = {  # intensity follows the true mechanism, as in the SCM
        "thickness": torch.tensor(target, dtype=torch.float32)[:, None],
        "intensity": torch.tensor(mm.intensity_mechanism(target, u_i), dtype=torch.float32)[:, None],
        "digit": fact["digit"],
    }
    with torch.no_grad():
        cf = mech.predict(mech.abduct(fact["image"], {p: fact[p] for p in PARENTS}), cf_parents)
    measured_cf = mm.measure_batch(cf.numpy(), "signed", features=("thickness",))["thickness"]
    measured_f = mm.measure_batch(fact["image"].numpy(), "signed", features=("thickness",))["thickness"]
    closer = np.abs(measured_cf - target) < np.abs(measured_f - target)
    assert closer.mean() >= 0.8, f"{family}: {closer.mean():.2f} of counterfactuals moved toward the target"
