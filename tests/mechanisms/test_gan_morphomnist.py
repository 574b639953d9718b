"""Slow: the conditional BiGAN learns to honour thickness on embedded Morpho-MNIST in a few CPU minutes."""

from __future__ import annotations

import time
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
MorphoMNIST = pytest.importorskip("imcf.data.morphomnist_dataset").MorphoMNIST

ROOT = Path(__file__).resolve().parents[2]
PARENTS = ("thickness", "intensity", "digit")
ADVERSARIAL_SECONDS = 150.0
FINETUNE_BATCHES = 40


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in ("image", *PARENTS)}


class TimeBudget(L.Callback):
    """Adversarial training for a fixed time, then the encoder fine-tuning stage for a fixed number of batches."""

    def __init__(self, mech: ConditionalGAN) -> None:
        self.mech, self.start = mech, time.perf_counter()

    def on_train_batch_end(self, trainer, *args) -> None:
        ft = self.mech.encoder_finetune
        if ft["after_steps"] is None and time.perf_counter() - self.start > ADVERSARIAL_SECONDS:
            ft["after_steps"] = int(self.mech.train_batches)
        if ft["after_steps"] is not None and int(self.mech.train_batches) >= ft["after_steps"] + FINETUNE_BATCHES:
            trainer.should_stop = True


@pytest.mark.slow
def test_counterfactual_thickness_moves_toward_the_target(tmp_path):
    """2,000-unit set (1,600 train); config/mechanism/image/gan.yaml with fixed parent ranges; 150 s of
    adversarial training plus 40 fine-tuning batches. For test images, do(thickness = t') with t' another
    test image's thickness (pairs with |measured - t'| >= 1 px): the measured counterfactual thickness moves
    toward t' for >= 70% of them."""
    torch.set_num_threads(1)
    graph = CausalGraph.from_dict(read_yaml(ROOT / "configs/graph/morphomnist.yaml"))
    train_set = MorphoMNIST(str(tmp_path), "train", num_samples=2000)
    test = collate(list(MorphoMNIST(str(tmp_path), "test", num_samples=2000)))
    config = read_yaml(ROOT / "configs/mechanism/image/gan.yaml")["config"]
    config["parent_ranges"] = {"thickness": [0.5, 6.5], "intensity": [64.0, 255.0]}
    L.seed_everything(0)
    mech = ConditionalGAN.from_graph(graph, "image", **config)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=10_000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[TimeBudget(mech)],
    )
    trainer.fit(UnitModule({"image": mech}, {"lr": 1e-3}), DataLoader(train_set, 64, shuffle=True, collate_fn=collate))
    mech.eval()

    x, pa = test["image"], {p: test[p] for p in PARENTS}
    measured = torch.tensor(mm.measure_batch(x.numpy(), features=("thickness",))["thickness"])
    target = pa["thickness"][torch.randperm(len(x), generator=torch.Generator().manual_seed(0))][:, 0].double()
    with torch.no_grad():
        cf = mech.predict(mech.abduct(x, pa), {**pa, "thickness": target[:, None].float()})
    cf_measured = torch.tensor(mm.measure_batch(cf.numpy(), features=("thickness",))["thickness"])
    keep = (target - measured).abs() >= 1.0
    toward = (torch.sign(cf_measured - measured) == torch.sign(target - measured))[keep].double().mean().item()
    assert keep.sum() >= 50
    assert toward >= 0.7, f"only {toward:.0%} of {int(keep.sum())} counterfactuals moved toward the target thickness"
