"""UnitModule inside a real Lightning Trainer: gradient stabilisation hooks of the image families, grids, RNG state."""

import random

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from imcf.data.base import stack_batch
from imcf.graph import CausalGraph
from imcf.io import atomic_torch_save, safe_torch_load
from imcf.mechanisms.vae import ConditionalVAE
from imcf.training.module import UnitModule, rng_state, set_rng_state

GRAPH = CausalGraph.from_dict({"t": "continuous", "image": {"kind": "image(1,16,16)", "parents": ["t"]}})


def _trainer(**settings) -> L.Trainer:
    """A quiet CPU Trainer without checkpoints."""
    quiet = {"enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    return L.Trainer(accelerator="cpu", **quiet, **settings)


def _fit(**config) -> tuple[dict, dict]:
    torch.manual_seed(0)
    mech = ConditionalVAE.from_graph(GRAPH, "image", latent_dim=4, widths=[8, 8], **config)
    before = {k: v.detach().clone() for k, v in mech.named_parameters()}
    data = [{"t": torch.randn(1), "image": torch.rand(1, 16, 16) * 2 - 1} for _ in range(32)]
    loader = DataLoader(data, batch_size=8, collate_fn=stack_batch)
    _trainer(max_steps=3, logger=False).fit(UnitModule({"image": mech}, {"lr": 1e-2}), train_dataloaders=loader)
    return before, dict(mech.named_parameters())


def test_grad_skip_skips_the_update():
    before, after = _fit(grad_skip=1e-9)  # every step's gradient norm is above it
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_without_skip_the_weights_move():
    before, after = _fit(grad_skip=None)
    assert sum(not torch.equal(before[k], after[k]) for k in before) > len(before) // 2


def test_validation_logs_image_grids_to_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    mech = ConditionalVAE.from_graph(GRAPH, "image", latent_dim=4, widths=[8, 8])
    data = [{"t": torch.randn(1), "image": torch.rand(1, 16, 16) * 2 - 1} for _ in range(16)]
    loader = DataLoader(data, batch_size=8, collate_fn=stack_batch)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = _trainer(max_epochs=1, logger=logger, num_sanity_val_steps=0)
    trainer.fit(UnitModule({"image": mech}), train_dataloaders=loader, val_dataloaders=loader)
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    tag = "val/image/factual_recon_sample_counterfactual"
    assert tag in events.Tags()["images"]
    img = events.Images(tag)[0]
    assert img.height > 4 * 16 and img.width > 8 * 16  # 4 rows (factual, recon, sample, cf) x 8 samples
    # the rows are named in a white margin on the left: dark text pixels there, one label per row
    from io import BytesIO

    from PIL import Image

    pixels = torch.from_numpy(np.asarray(Image.open(BytesIO(img.encoded_image_string)).convert("L")).copy())
    margin = img.width - (8 * (16 + 2) + 2)
    assert margin > 20
    rows_with_text = [bool((pixels[2 + r * 18 : 2 + (r + 1) * 18 - 2, :margin] < 128).any()) for r in range(4)]
    assert rows_with_text == [True] * 4


def _draws(cuda: bool = False) -> list:
    draws = [torch.rand(3), random.random(), np.random.rand(3)]  # noqa: NPY002  (the global generator is the point)
    return draws + ([torch.rand(3, device="cuda").cpu()] if cuda else [])


def _assert_same_draws(a: list, b: list) -> None:
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])
    if len(a) > 3:
        assert torch.equal(a[3], b[3])


def test_every_generator_travels_with_the_checkpoint(tmp_path):
    """torch, Python and NumPy states survive a weights_only round trip and restore the same draws."""
    torch.manual_seed(3), random.seed(3), np.random.seed(3)  # noqa: NPY002
    path = atomic_torch_save({"imcf_rng": rng_state()}, tmp_path / "last.ckpt")
    first = _draws()
    set_rng_state(safe_torch_load(path)["imcf_rng"])
    _assert_same_draws(first, _draws())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generators_travel_with_the_checkpoint(tmp_path):
    torch.cuda.manual_seed_all(3)
    torch.rand(1, device="cuda")  # the CUDA generators exist once CUDA is initialised
    path = atomic_torch_save({"imcf_rng": rng_state()}, tmp_path / "last.ckpt")
    assert "cuda" in safe_torch_load(path)["imcf_rng"]
    first = _draws(cuda=True)
    set_rng_state(safe_torch_load(path)["imcf_rng"])
    _assert_same_draws(first, _draws(cuda=True))
