"""`abduction.fit`: the encoder's latents fitted to the image under the model's own likelihood (a maximum a
posteriori abduction; ELBOImageMechanism), run by `predict` on the rows whose answer it can change.
`_abduct(x, pa, fit=True)` is the fitted abduction of every row, what those rows are answered from."""

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

CONFIGS = {
    ConditionalVAE: {**TINY_VAE, "abduction": {}},
    HierarchicalVAE: {**TINY_HVAE, "abduction": {"latents": "exogenous"}},
}
FAMILIES = [ConditionalVAE, HierarchicalVAE]


def build(family, **fit):
    """A model of `family` abducting with `abduction.fit` = `fit`; the same weights at every call."""
    torch.manual_seed(3)
    cfg = CONFIGS[family]
    return family.from_graph(GRAPH, "image", **{**cfg, "abduction": {**cfg["abduction"], "fit": fit}}).eval()


def query(n: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 32, 32, generator=g) * 2 - 1
    pa = {"ink": torch.rand(n, 1, generator=g), "digit": F.one_hot(torch.arange(n) % 10, 10).float()}
    return x, pa


def neg_log_joint(mech, x, pa, latents, prior=1.0) -> torch.Tensor:
    """(B,) -log p(x | z, pa) + prior / 2 |z|^2, the objective `abduction.fit` descends."""
    noise = LatentNoise(list(latents), standardised=mech.latent_mode == "exogenous")
    cond = mech.condition(pa, x.shape[0])
    nll = -mech.image_log_likelihood(x, noise, cond, mech.gain(pa))
    return nll + 0.5 * prior * sum((z * z).flatten(1).sum(1) for z in latents)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_step_is_adams_first_step_on_the_log_joint(family) -> None:
    """steps 1, rate r: Adam's first step is z1 = z0 - r * g / (|g| + 1e-8) elementwise, g the gradient of the
    negative log joint at the encoder's latents z0, computed here by hand."""
    x, pa = query()
    plain, fitted = build(family), build(family, steps=1, rate=0.02, prior=0.5)
    with torch.no_grad():
        z0 = plain.abduct(x, pa).latents
        got = fitted._abduct(x, pa, fit=True).latents
    leaves = [z.clone().requires_grad_(True) for z in z0]
    grads = torch.autograd.grad(neg_log_joint(plain, x, pa, leaves, prior=0.5).sum(), leaves)
    for z, g, new in zip(z0, grads, got, strict=True):
        assert torch.allclose(new, z - 0.02 * g / (g.abs() + 1e-8), atol=1e-6)
        assert not torch.allclose(new, z)


@pytest.mark.parametrize("family", FAMILIES)
def test_steps_lower_the_negative_log_joint_of_every_row_and_rows_are_fitted_alone(family) -> None:
    """Twenty steps lower each row's negative log joint below the encoder's; a row fitted in a batch gets the
    latents it gets alone (the loss is a sum over rows, Adam is elementwise)."""
    x, pa = query()
    plain, fitted = build(family), build(family, steps=20, rate=0.05)
    with torch.no_grad():
        start = neg_log_joint(plain, x, pa, plain.abduct(x, pa).latents)
        batch = fitted._abduct(x, pa, fit=True).latents
        end = neg_log_joint(plain, x, pa, batch)
        alone = fitted._abduct(x[2:3], {p: v[2:3] for p, v in pa.items()}, fit=True).latents
    assert (end < start).all()
    for b, a in zip(batch, alone, strict=True):
        assert torch.allclose(b[2:3], a, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_fitted_abduction_stays_exact_and_carries_more_of_the_image(family) -> None:
    """The residual is taken against the fitted decode, so a null intervention still returns the image; the
    fitted decode is closer to the image than the encoder's (the residual smaller)."""
    x, pa = query()
    plain, fitted = build(family), build(family, steps=20, rate=0.05)
    with torch.no_grad():
        noise = fitted._abduct(x, pa, fit=True)
        assert torch.allclose(fitted.predict(noise, pa), x, atol=1e-5)
        assert torch.allclose(fitted.predict(fitted.abduct(x, pa), pa), x, atol=1e-5)
        base = plain.abduct(x, pa)
    assert noise.residual.pow(2).mean() < base.residual.pow(2).mean()


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_whose_digit_changes_answer_from_the_encoders_latents(family) -> None:
    """`withheld: false` (default): a row whose withheld parent (the digit) changes is redrawn from the encoder's
    latents, exactly the unfitted model's answer; the other rows use the fitted ones. `withheld: true` redraws
    it from the fitted latents."""
    x, pa = query()
    new = {**pa, "digit": F.one_hot(torch.tensor([0, 5, 2, 7, 4, 9]), 10).float()}  # rows 1, 3, 5 change
    new["ink"] = pa["ink"] + 0.3  # every row's shape changes
    plain, fitted = build(family), build(family, steps=10, rate=0.05)
    everywhere = build(family, steps=10, rate=0.05, withheld=True)
    with torch.no_grad():
        base = plain.predict(plain.abduct(x, pa), new)
        got = fitted.predict(fitted.abduct(x, pa), new)
        all_fitted = everywhere.predict(everywhere.abduct(x, pa), new)
    assert torch.allclose(got[[1, 3, 5]], base[[1, 3, 5]], atol=1e-6)
    assert not torch.equal(got[[0, 2, 4]], base[[0, 2, 4]])
    assert torch.allclose(got[[0, 2, 4]], all_fitted[[0, 2, 4]], atol=1e-6)
    assert not torch.allclose(all_fitted[[1, 3, 5]], base[[1, 3, 5]], atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_runs_only_on_rows_whose_answer_it_changes(family, monkeypatch) -> None:
    """With the residual kept, a null or gain-free unchanged row returns the image whatever the latents, so
    `predict` fits no row for the null intervention and only the rows whose shape parents change otherwise
    (not those whose digit changes, `withheld: false`); those rows get exactly the answer of the whole batch
    fitted. Without a residual every row's answer is its decode, so every row is fitted."""
    x, pa = query()
    fitted = build(family, steps=10, rate=0.05)
    sizes: list[int] = []
    original = fitted._fit_latents

    def counting(noise, *args):
        sizes.append(noise.batch_size)
        return original(noise, *args)

    monkeypatch.setattr(fitted, "_fit_latents", counting)
    new = {**pa, "ink": pa["ink"] + torch.tensor([0.3, 0.3, 0.0, 0.3, 0.0, 0.0])[:, None]}  # rows 0, 1, 3
    new["digit"] = F.one_hot(torch.tensor([0, 5, 2, 3, 4, 5]), 10).float()  # row 1's digit changes too
    with torch.no_grad():
        assert torch.allclose(fitted.predict(fitted.abduct(x, pa), pa), x, atol=1e-5)
        assert sizes == []
        got = fitted.predict(fitted.abduct(x, pa), new)
        assert sizes == [2]  # rows 0 and 3
        whole = fitted.predict(fitted._abduct(x, pa, fit=True), new)
        assert sizes == [2, 6]
        assert torch.allclose(got[[0, 3]], whole[[0, 3]], atol=1e-5)
        assert torch.allclose(got[[2, 4, 5]], x[[2, 4, 5]], atol=1e-5)
        bare = build(family, steps=10, rate=0.05)
        bare.keep_residual = False
        monkeypatch.setattr(bare, "_fit_latents", counting)
        bare.predict(bare.abduct(x, pa), pa)
        assert sizes == [2, 6, 6]


@pytest.mark.parametrize("residual", ["relative", "tone", "transported"])
def test_fitted_rows_answer_as_the_whole_batch_fitted_under_every_residual_mode(residual) -> None:
    """The rows `predict` fits carry their own residual, tone curve or decode (merged into the batch's noise): each
    answers as when every row is fitted (to float rounding), the unchanged rows return the image, under each
    residual mode."""
    x, pa = query()
    torch.manual_seed(3)
    cfg = {**TINY_VAE, "abduction": {"residual": residual, "fit": {"steps": 20, "rate": 0.5}}}
    mech = ConditionalVAE.from_graph(GRAPH, "image", **cfg).eval()
    new = {**pa, "ink": pa["ink"] + torch.tensor([0.3, 0.0, 0.3, 0.0, 0.0, 0.3])[:, None]}  # rows 0, 2, 5
    with torch.no_grad():
        got = mech.predict(mech.abduct(x, pa), new)
        whole = mech.predict(mech._abduct(x, pa, fit=True), new)
        unfitted = mech.predict(mech._abduct(x, pa, fit=False), new)
    # the tone curve's steep pieces turn the batches' float rounding (latents within 2e-6) into up to 1e-4
    rounding = (got[[0, 2, 5]] - whole[[0, 2, 5]]).abs().amax()
    assert rounding < 1e-3
    assert (got[[0, 2, 5]] - unfitted[[0, 2, 5]]).abs().amax() > 10 * rounding
    assert torch.allclose(got[[1, 3, 4]], x[[1, 3, 4]], atol=1e-5)


def test_fit_is_skipped_in_training_mode() -> None:
    """Training (counterfactual fine-tuning, the realism stage) answers from the encoder's latents."""
    x, pa = query()
    plain, fitted = build(ConditionalVAE), build(ConditionalVAE, steps=5)
    plain.train()
    fitted.train()
    new = {**pa, "ink": pa["ink"] + 0.3}
    with torch.no_grad():
        noise = fitted.abduct(x, pa)
        assert "fit_image" not in noise.extras
        assert torch.equal(fitted.predict(noise, new), plain.predict(plain.abduct(x, pa), new))


def test_fit_needs_a_likelihood_and_prior_centred_latents_and_bad_values_are_named() -> None:
    """The GAN (no likelihood) and an HVAE with fixed latents (a parent-conditioned prior) refuse steps > 0 when
    built; bad numbers and unknown keys are named."""
    with pytest.raises(ValueError, match=r"gan 'image': abduction.fit.steps > 0 fits the latents under the model's"):
        ConditionalGAN.from_graph(GRAPH, "image", abduction={"fit": {"steps": 3}})
    with pytest.raises(ValueError, match=r"hvae 'image': abduction.fit.steps > 0 needs latents whose prior is N"):
        HierarchicalVAE.from_graph(GRAPH, "image", **TINY_HVAE, abduction={"fit": {"steps": 3}, "latents": "fixed"})
    for bad, message in [
        ({"steps": -1}, r"vae 'image': abduction.fit.steps must be whole number\(s\) >= 0"),
        ({"rate": 0}, r"vae 'image': abduction.fit.rate must be a number > 0"),
        ({"prior": -1}, r"vae 'image': abduction.fit.prior must be a number >= 0"),
        ({"withheld": "no"}, r"vae 'image': abduction.fit.withheld must be true or false"),
    ]:
        with pytest.raises(ValueError, match=message):
            build(ConditionalVAE, **bad)
    with pytest.raises(KeyError, match=r"abduction.fit: unknown key\(s\) \['step'\]"):
        build(ConditionalVAE, step=3)


def test_fit_is_an_inference_option_of_a_trained_model() -> None:
    """Set on a built SCM (as `evaluate.py +inference.image.abduction.fit.steps=N` does) it keeps the weights;
    the null intervention still returns the factual image and a do(ink) answer changes."""
    mechs = {"ink": LinearGaussian.from_graph(GRAPH, "ink"), "digit": DiscreteMechanism.from_graph(GRAPH, "digit")}
    scm = SCM(GRAPH, {**mechs, "image": build(ConditionalVAE)}).eval()
    x, pa = query()
    factual = {**pa, "image": x}
    weights = {k: v.clone() for k, v in scm.mechanisms["image"].state_dict().items()}
    before = scm.counterfactual(factual, {"ink": pa["ink"] + 0.5})["image"]
    scm.set_inference_options("image", {"abduction": {"fit": {"steps": 10, "rate": 0.05}}})
    assert scm.mechanisms["image"].fit == {"steps": 10, "rate": 0.05, "prior": 1.0, "withheld": False}
    assert all(torch.equal(v, weights[k]) for k, v in scm.mechanisms["image"].state_dict().items())
    assert torch.allclose(scm.counterfactual(factual, {})["image"], x, atol=1e-5)
    after = scm.counterfactual(factual, {"ink": pa["ink"] + 0.5})["image"]
    assert not torch.allclose(after, before, atol=1e-4)
