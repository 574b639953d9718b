"""Slow: the conditional BiGAN learns to honour thickness on embedded Morpho-MNIST in a few CPU minutes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from imcf.graph import CausalGraph
from imcf.io import read_yaml
from imcf.mechanisms.gan import ConditionalGAN
from imcf.training.module import UnitModule

# the embedded Morpho-MNIST set is built in parallel with this family: skip (not fail) while it is missing
mm = pytest.importorskip("imcf.data.morphomnist")
MorphoMNIST = pytest.importorskip("imcf.data.morphomnist.dataset").MorphoMNIST

ROOT = Path(__file__).resolve().parents[2]
PARENTS = ("thickness", "intensity", "digit")
ADVERSARIAL_BATCHES = 150
FINETUNE_BATCHES = 40


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in ("image", *PARENTS)}


@pytest.mark.slow
def test_counterfactual_thickness_moves_toward_the_target(tmp_path):
    """2,500-unit set (2,000 train); configs/mechanism/image/gan.yaml with fixed parent ranges; 150
    adversarial batches of 64 plus 40 encoder fine-tuning batches (about 4 CPU minutes on a shared machine).
    Every test image gets do(thickness = t'), t' = its measured thickness + 1.5 px when below the median,
    - 1.5 px otherwise (inside the training range): the measured counterfactual thickness moves toward t'
    for >= 70% of them."""
    torch.set_num_threads(1)
    graph = CausalGraph.from_dict(read_yaml(ROOT / "configs/graph/morphomnist.yaml"))
    train_set = MorphoMNIST(str(tmp_path), "train", num_samples=2500)
    test = collate(list(MorphoMNIST(str(tmp_path), "test", num_samples=2500)))
    config = read_yaml(ROOT / "configs/mechanism/image/gan.yaml")["config"]
    config["parent_ranges"] = {"thickness": [0.5, 6.5], "intensity": [64.0, 255.0]}
    config["encoder_finetune"] = {"after_steps": ADVERSARIAL_BATCHES, "latent_weight": 1.0}
    L.seed_everything(0)
    mech = ConditionalGAN.from_graph(graph, "image", **config)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2 * ADVERSARIAL_BATCHES + FINETUNE_BATCHES,  # optimizer steps: 2 per adversarial batch
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(UnitModule({"image": mech}, {"lr": 1e-3}), DataLoader(train_set, 64, shuffle=True, collate_fn=collate))
    mech.eval()

    x, pa = test["image"], {p: test[p] for p in PARENTS}
    measured = torch.tensor(mm.measure_batch(x.numpy(), features=("thickness",))["thickness"])
    target = torch.where(measured < measured.median(), measured + 1.5, measured - 1.5)
    with torch.no_grad():
        cf = mech.predict(mech.abduct(x, pa), {**pa, "thickness": target[:, None].float()})
    cf_measured = torch.tensor(mm.measure_batch(cf.numpy(), features=("thickness",))["thickness"])
    toward = (torch.sign(cf_measured - measured) == torch.sign(target - measured)).double().mean().item()
    assert toward >= 0.7, f"only {toward:.0%} of {len(x)} counterfactuals moved toward the target thickness"
