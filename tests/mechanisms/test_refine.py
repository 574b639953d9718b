"""`abduction.refine`: the latents of rows whose withheld parents change, moved toward decodes the realism critic
reads as real (ELBOImageMechanism with a critic)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imcf.mechanisms.discrete import DiscreteMechanism
from imcf.mechanisms.gan import ConditionalGAN
from imcf.mechanisms.hvae import HierarchicalVAE
from imcf.mechanisms.latent_image import LatentNoise
from imcf.mechanisms.linear_gaussian import LinearGaussian
from imcf.mechanisms.vae import ConditionalVAE
from imcf.scm import SCM
from tests.mechanisms.test_image_mechanisms import GRAPH, TINY_HVAE, TINY_VAE

CRITIC = {"weight": 1.0, "start": 0, "warmup": 0}
CONFIGS = {
    ConditionalVAE: {**TINY_VAE, "abduction": {"withheld_latent_scale": 0.5}},
    HierarchicalVAE: {**TINY_HVAE, "abduction": {"withheld_latent_scale": 0.5, "latents": "exogenous"}},
}


def build(family, **refine):
    """A model of `family` with a critic, answering with `abduction.refine` = `refine`; same weights each call."""
    torch.manual_seed(3)
    cfg = CONFIGS[family]
    return family.from_graph(
        GRAPH, "image", adversarial=CRITIC, **{**cfg, "abduction": {**cfg["abduction"], "refine": refine}}
    ).eval()


def query(n: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 32, 32, generator=g) * 2 - 1
    pa = {"ink": torch.rand(n, 1, generator=g), "digit": F.one_hot(torch.arange(n) % 10, 10).float()}
    new = {**pa, "digit": F.one_hot(torch.tensor([0, 5, 2, 7, 4, 9])[:n], 10).float()}  # rows 1, 3, 5 change
    return x, pa, new


@pytest.mark.parametrize("family", [ConditionalVAE, HierarchicalVAE])
def test_one_step_is_the_gradient_step_on_the_critic_and_other_rows_are_untouched(family) -> None:
    """steps 1, rate r: the changed rows decode from z1 = z0 - r * grad softplus(-D(decode(z0), pa')) (the
    proximity term has no gradient at z0), computed here by hand; unchanged rows and the null intervention are the
    model's answers without refinement, exactly."""
    x, pa, new = query()
    rate = 100.0  # an untrained critic's gradient is small
    plain, refined = build(family), build(family, steps=1, rate=rate, proximity=0.01)
    rows = [1, 3, 5]
    with torch.no_grad():
        noise = plain.abduct(x, pa)
        shrunk = plain._shrink_withheld(noise, new)
        cond = plain.condition(new, x.shape[0])
        assert torch.equal(refined.predict(refined.abduct(x, pa), pa), plain.predict(noise, pa))
        got, base = refined.predict(refined.abduct(x, pa), new), plain.predict(noise, new)
    z = [t[rows].clone().requires_grad_(True) for t in shrunk.latents]
    decoded = plain.decode(LatentNoise(z, standardised=shrunk.standardised), cond[rows])
    loss = F.softplus(-plain.critic(decoded, cond[rows])).sum()
    step = [(t - rate * g).detach() for t, g in zip(z, torch.autograd.grad(loss, z), strict=True)]
    with torch.no_grad():
        want = plain.decode(LatentNoise(step, standardised=shrunk.standardised), cond[rows])
    assert torch.allclose(got[rows], want, atol=1e-5)
    assert not torch.allclose(got[rows], base[rows], atol=1e-4)  # the step moved them
    assert torch.equal(got[[0, 2, 4]], base[[0, 2, 4]])


def test_refine_is_skipped_in_training_mode() -> None:
    """Training (counterfactual fine-tuning) answers from the abducted latents, as the fit does: no refinement, so
    no power-iteration step of the critic's spectral norm per counterfactual forward pass."""
    x, pa, new = query()
    plain, refined = build(ConditionalVAE), build(ConditionalVAE, steps=3, rate=100.0, proximity=0.01)
    plain.train()
    refined.train()

    def power_vectors() -> list[torch.Tensor]:  # the spectral norms' power-iteration vectors
        return [b.clone() for n, b in refined.critic.named_buffers() if n.endswith("_u")]

    before = power_vectors()
    with torch.no_grad():
        got = refined.predict(refined.abduct(x, pa), new)
        assert torch.equal(got, plain.predict(plain.abduct(x, pa), new))
    assert before and all(torch.equal(a, b) for a, b in zip(before, power_vectors(), strict=True))
    refined.eval()
    with torch.no_grad():
        assert not torch.allclose(refined.predict(refined.abduct(x, pa), new)[[1, 3, 5]], got[[1, 3, 5]], atol=1e-4)


@pytest.mark.parametrize("family", [ConditionalVAE, HierarchicalVAE])
def test_steps_raise_the_critic_and_proximity_holds_the_latents_near_the_abduction(family) -> None:
    """More steps read as more real to the critic (the mean logit of the changed rows rises); a larger proximity
    moves the latents less (at the fixed point |z - z0| = |grad softplus| / proximity)."""
    x, pa, new = query()
    rows = [1, 3, 5]

    def answer(**refine):
        mech = build(family, **refine)
        with torch.no_grad():
            noise = mech.abduct(x, pa)
            shrunk = mech._shrink_withheld(noise, new)
            moved = mech._refine_withheld(shrunk, new, mech.condition(new, 6), False) if refine else shrunk
            out = mech._decode_shape(moved, mech.condition(new, 6), False)
            logit = mech.critic(out[rows], mech.condition(new, 6)[rows]).mean().item()
        dist = sum(((a - b)[rows] ** 2).sum().item() for a, b in zip(moved.latents, shrunk.latents, strict=True))
        return logit, dist**0.5

    start, _ = answer()
    few, _ = answer(steps=2, rate=100.0, proximity=0.0)  # an untrained critic's gradient is small
    many, far = answer(steps=20, rate=100.0, proximity=0.0)
    assert start < few < many
    _, near = answer(steps=20, rate=100.0, proximity=0.005)
    assert 0 < near < 0.8 * far


def test_refine_needs_a_critic_and_bad_values_are_named() -> None:
    """A model without a critic (no adversarial weight; the GAN) refuses steps > 0 when built; steps 0 is the
    plain answer; steps, rate and proximity out of range and unknown keys are named."""
    cfg = CONFIGS[ConditionalVAE]
    with pytest.raises(ValueError, match=r"vae 'image': abduction.refine.steps > 0 needs a realism critic"):
        ConditionalVAE.from_graph(GRAPH, "image", **{**cfg, "abduction": {"refine": {"steps": 3}}})
    with pytest.raises(ValueError, match=r"gan 'image': abduction.refine.steps > 0 needs a realism critic"):
        ConditionalGAN.from_graph(GRAPH, "image", abduction={"refine": {"steps": 3}})
    for bad, message in [
        ({"steps": -1}, r"vae 'image': abduction.refine.steps must be whole number\(s\) >= 0"),
        ({"steps": 2.5}, r"abduction.refine.steps must be whole number"),
        ({"rate": 0}, r"vae 'image': abduction.refine.rate must be a number > 0"),
        ({"proximity": -1}, r"vae 'image': abduction.refine.proximity must be a number >= 0"),
        ({"rate": 4, "proximity": 0.5}, r"abduction.refine.rate \* abduction.refine.proximity must be < 2"),
    ]:
        with pytest.raises(ValueError, match=message):
            build(ConditionalVAE, **bad)
    with pytest.raises(KeyError, match=r"abduction.refine: unknown key\(s\) \['step'\]"):
        build(ConditionalVAE, step=3)


def test_refine_is_an_inference_option_of_a_trained_model() -> None:
    """Set on a built SCM (as `evaluate.py +inference.image.abduction.refine.steps=N` does) it keeps the weights
    and changes only the rows whose digit changes."""
    mechs = {"ink": LinearGaussian.from_graph(GRAPH, "ink"), "digit": DiscreteMechanism.from_graph(GRAPH, "digit")}
    scm = SCM(GRAPH, {**mechs, "image": build(ConditionalVAE)}).eval()
    x, pa, new = query()
    factual = {**pa, "image": x}
    before = scm.counterfactual(factual, {"digit": new["digit"]})["image"]
    scm.set_inference_options("image", {"abduction": {"refine": {"steps": 3, "rate": 100.0, "proximity": 0.01}}})
    assert scm.mechanisms["image"].refine == {"steps": 3, "rate": 100.0, "proximity": 0.01}
    after = scm.counterfactual(factual, {"digit": new["digit"]})["image"]
    assert torch.equal(after[[0, 2, 4]], before[[0, 2, 4]])
    assert not torch.allclose(after[[1, 3, 5]], before[[1, 3, 5]], atol=1e-3)
