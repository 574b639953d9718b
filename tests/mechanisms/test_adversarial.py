"""The adversarial realism term of the likelihood image families (`adversarial` option of ELBOImageMechanism)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.nn.utils.parametrize import is_parametrized

from imcf.mechanisms.hvae import HierarchicalVAE
from imcf.mechanisms.latent_image import warmup_weight
from imcf.mechanisms.vae import ConditionalVAE
from imcf.nn.critic import ConditionalCritic
from imcf.training.fit import fit_mechanism
from imcf.training.module import UnitModule
from tests.mechanisms.test_image_mechanisms import GRAPH, TINY_HVAE, TINY_VAE

VAE = {**TINY_VAE, "abduction": {"withheld_latent_scale": 0.5}}


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g) * 2 - 1
    return x, {"ink": torch.rand(n, 1, generator=g), "digit": F.one_hot(torch.arange(n) % 10, 10).float()}


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("family", "cfg"), [(ConditionalVAE, VAE), (HierarchicalVAE, TINY_HVAE)])
@pytest.mark.parametrize("layout", ["residual", "strided"])
def test_the_decoder_learns_against_the_critic_and_the_critic_only_from_its_own_loss(family, cfg, layout) -> None:
    """One optimiser step trains both: the critic's gradient is that of its logistic loss whatever the
    decoder's weight; the decoder's scales with the weight; the encoder gets none (the latents are abducted)."""
    x, pa = batch()
    got = {}
    for weight in (0.1, 10.0):
        torch.manual_seed(0)
        adversarial = {"weight": weight, "start": 0, "warmup": 0, "layout": layout}
        mech = family.from_graph(GRAPH, "image", adversarial=adversarial, **cfg)
        terms = mech.adversarial_terms(x, pa, mech.condition(pa, x.shape[0]))
        assert set(terms) == {"loss", "adv_g", "adv_d", "adv_weight"}
        assert float(terms["adv_weight"]) == pytest.approx(weight)
        terms["loss"].backward()
        got[weight] = (terms, grads(mech.critic), grads(mech))
    (t1, c1, m1), (t2, c2, m2) = got[0.1], got[10.0]
    assert float(t1["adv_d"]) == pytest.approx(float(t2["adv_d"])) and float(t1["adv_d"]) > 0
    assert c1 and c1.keys() == c2.keys()
    for k in c1:
        torch.testing.assert_close(c1[k], c2[k])
    decoder = [k for k in m1 if not k.startswith("critic.") and k in m2 and not torch.allclose(m1[k], m2[k])]
    assert decoder, "the decoder's gradient must grow with the adversarial weight"
    assert not any(k.startswith(("encoder.", "to_posterior.")) for k in m1), sorted(m1)


def test_warmup_starts_the_critic_halfway_and_evaluation_leaves_the_loss_alone() -> None:
    x, pa = batch()
    mech = ConditionalVAE.from_graph(GRAPH, "image", adversarial={"weight": 2.0, "start": 0, "warmup": 4}, **VAE)
    seen = []
    for _ in range(5):
        seen.append(mech.current_adversarial_weight())
        out = mech.loss(x, pa)
        assert ("adv_d" in out) and (float(out["adv_d"]) > 0) == (seen[-1] > 0)
    assert seen == [0.0, 0.0, 0.0, 1.0, 2.0]
    assert int(mech.adversarial_steps) == 5 and "adversarial_steps" in mech.state_dict()
    mech.eval()
    with torch.no_grad():
        b = mech.loss(x, pa)
    assert "adv_g" not in b and int(mech.adversarial_steps) == 5  # validation: the ELBO only (best-epoch choice)
    assert float(b["loss"]) == float(b["elbo"])


def test_a_late_start_delays_the_ramp_and_runs_nothing_before_it() -> None:
    """start 3, warm-up 4: off for the 3 steps and the warm-up's first 3 (as without a start: no critic step, its
    weights stay put), then 1.0, 2.0."""
    x, pa = batch()
    mech = ConditionalVAE.from_graph(GRAPH, "image", adversarial={"weight": 2.0, "start": 3, "warmup": 4}, **VAE)
    before = {k: v.clone() for k, v in mech.critic.state_dict().items()}  # spectral-norm vectors move per pass
    seen = []
    for step in range(8):
        if step == 6:
            assert all(torch.equal(before[k], v) for k, v in mech.critic.state_dict().items())
        seen.append(mech.current_adversarial_weight())
        out = mech.loss(x, pa)
        assert (float(out["adv_d"]) > 0) == (seen[-1] > 0)
        if seen[-1] == 0:
            out["loss"].backward()  # nothing from the critic: it takes no gradient before the start
            assert all(p.grad is None for p in mech.critic.parameters())
    assert seen == [0.0] * 6 + [1.0, 2.0]
    assert not all(torch.equal(before[k], v) for k, v in mech.critic.state_dict().items())


def test_no_critic_without_a_weight_and_bad_options_are_named() -> None:
    assert ConditionalVAE.from_graph(GRAPH, "image", **VAE).critic is None
    for bad, message in [
        ({"weight": -1}, r"adversarial.weight must be a number >= 0"),
        ({"weight": 1, "fraction": 0}, r"adversarial.fraction must be a number > 0"),
        ({"weight": 1, "fraction": 1.5}, r"adversarial.fraction must be in \(0, 1\]"),
        ({"weight": 1, "warmup": -3}, r"adversarial.warmup must be whole number"),
        ({"weight": 1, "start": 1.5}, r"adversarial.start must be whole number"),
        ({"weight": 1, "widths": [8, 8, 8, 8, 8, 8, 8]}, r"critic widths .* divisible"),
        ({"weight": 1, "hidden": 0}, r"adversarial.hidden must be whole number"),
        ({"weight": 1, "layout": "dcgan"}, r"vae 'image': adversarial.layout must be one of"),
        ({"weight": 1, "layout": "strided", "widths": [8, 8, 8, 8, 8, 8]}, r"critic widths .* divisible by 64"),
        ({"weight": 1, "latent_scale": 1.5}, r"image: adversarial.latent_scale must be a number in \[0, 1\].*got 1.5"),
        ({"weight": 1, "latent_scale": [0.5, 0.5]}, r"adversarial.latent_scale lists 2 scales but the mechanism has 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            ConditionalVAE.from_graph(GRAPH, "image", adversarial=bad, **VAE)
    for bad, message in [
        (["dgit"], r"vae 'image': adversarial.parents \['dgit'\] are not parents of 'image' \(its parents: "),
        ("digit", r"adversarial.parents must be a non-empty list of parent names or null, got 'digit'"),
        ([], r"adversarial.parents must be a non-empty list"),
    ]:
        with pytest.raises(ValueError, match=message):
            ConditionalVAE.from_graph(GRAPH, "image", adversarial={"weight": 1, "parents": bad}, **VAE)
    with pytest.raises(ValueError, match=r"vae 'image': adversarial.lr_scale must be a number > 0"):
        ConditionalVAE.from_graph(GRAPH, "image", adversarial={"weight": 1, "lr_scale": 0}, **VAE)
    with pytest.raises(KeyError, match=r"adversarial: unknown key\(s\) \['wieght'\]"):
        ConditionalVAE.from_graph(GRAPH, "image", adversarial={"wieght": 1}, **VAE)


@pytest.mark.parametrize("family", [ConditionalVAE, HierarchicalVAE])
def test_the_critic_decodes_at_its_own_latent_scale(family) -> None:
    """`adversarial.latent_scale` replaces the abduction's `withheld_latent_scale` for the critic's decodes alone:
    trained at 0.5 and answered at 1 gives the critic's terms of trained and answered at 0.5; null follows the
    abduction; and the scale matters (1 there differs)."""
    x, pa = batch()

    def terms(abduction: float, critic: float | None) -> tuple[float, float, float]:
        torch.manual_seed(0)
        base = TINY_VAE if family is ConditionalVAE else TINY_HVAE
        cfg = {**base, "abduction": {"withheld_latent_scale": abduction}}
        if family is HierarchicalVAE:
            cfg["abduction"]["latents"] = "exogenous"
        adversarial = {"weight": 1.0, "start": 0, "warmup": 0, "latent_scale": critic}
        mech = family.from_graph(GRAPH, "image", adversarial=adversarial, **cfg)
        assert mech.latent_scales("digit") == (abduction,) * len(mech.noise_shapes())  # predict's is unchanged
        got = mech.adversarial_terms(x, pa, mech.condition(pa, x.shape[0]))
        return float(got["adv_g"]), float(got["adv_d"]), float(got["loss"].detach())

    assert terms(1.0, 0.5) == pytest.approx(terms(0.5, None))
    assert terms(0.5, 0.5) == pytest.approx(terms(0.5, None))
    assert terms(0.5, 1.0) != pytest.approx(terms(0.5, None))


@pytest.mark.parametrize("family", [ConditionalVAE, HierarchicalVAE])
def test_the_critic_moves_only_its_parents_and_keeps_the_others_factual(family) -> None:
    """`adversarial.parents: [digit]`: the critic's decodes are conditioned on the next row's digit and the row's
    own ink (the features of those parents, the running statistics untouched); naming every parent is the
    default (null); and moving the digit alone differs from moving both."""
    x, pa = batch()
    pa["ink"] = pa["ink"] * 3

    def run(parents: list[str] | None) -> tuple[tuple[float, float], list[torch.Tensor], torch.nn.Module]:
        torch.manual_seed(0)
        cfg = {**(VAE if family is ConditionalVAE else TINY_HVAE)}
        adversarial = {"weight": 1.0, "start": 0, "warmup": 0, "fraction": 1.0, "parents": parents}
        mech = family.from_graph(GRAPH, "image", adversarial=adversarial, **cfg)
        mech.condition(pa, x.shape[0])  # running statistics of the ink from one batch
        seen: list[torch.Tensor] = []
        forward = mech.critic.forward
        mech.critic.forward = lambda image, cond: seen.append(cond.detach().clone()) or forward(image, cond)
        stats = {k: v.clone() for k, v in mech.parent_encoder.state_dict().items()}
        got = mech.adversarial_terms(x, pa, mech.condition(pa, x.shape[0], update=False))
        assert all(torch.equal(stats[k], v) for k, v in mech.parent_encoder.state_dict().items())
        return (float(got["adv_g"]), float(got["adv_d"])), seen, mech

    both, seen_all, _ = run(None)
    assert run(["digit", "ink"])[0] == pytest.approx(both)
    digit_only, seen, mech = run(["digit"])
    assert digit_only != pytest.approx(both)
    assert mech.critic_parents == ("digit",)
    moved = {"ink": pa["ink"], "digit": pa["digit"].roll(1, 0)}
    fake_cond = seen[0]  # the decoder's loss, then the critic's: real under the row's own parents, then fake
    torch.testing.assert_close(fake_cond, mech.condition(moved, x.shape[0], update=False))
    torch.testing.assert_close(seen[1], mech.condition(pa, x.shape[0], update=False))
    torch.testing.assert_close(seen_all[0], mech.condition(pa, x.shape[0], update=False).roll(1, 0))
    assert not torch.allclose(fake_cond, seen_all[0])


def test_a_two_timescale_critic_takes_its_own_learning_rate() -> None:
    """`adversarial.lr_scale: 4`: the critic is a group of its own at 4x the rate, so Adam's first step (about the
    rate times the gradient's sign per weight) moves it 4x as far, and every other weight as at 1 (one group)."""

    def first_step(scale: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        adversarial = {"weight": 1.0, "start": 0, "warmup": 0, "lr_scale": scale}
        mech = ConditionalVAE.from_graph(GRAPH, "image", adversarial=adversarial, **VAE)
        groups = mech.optimizer_groups(1e-3)
        unit = UnitModule({"image": mech}, {"lr": 1e-3}).configure_optimizers()  # train.py's optimiser too
        if scale == 1:  # one group, as checkpoints written before the option hold it
            assert len(groups) == 1 and len(unit.param_groups) == 1
        else:
            assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-3 * scale)]
            assert {id(p) for p in groups[1]["params"]} == {id(p) for p in mech.critic.parameters()}
            assert [g["lr"] for g in unit.param_groups] == [1e-3, pytest.approx(1e-3 * scale)]
        before = {k: p.detach().clone() for k, p in mech.named_parameters()}
        x, pa = batch()
        fit_mechanism(mech, x, pa, steps=1, batch_size=8)
        moved = {k: (p.detach() - before[k]).abs().sum() for k, p in mech.named_parameters()}
        return {k: v for k, v in moved.items() if k.startswith("critic.")}, {
            k: v for k, v in moved.items() if not k.startswith("critic.")
        }

    (critic1, rest1), (critic4, rest4) = first_step(1.0), first_step(4.0)
    assert sum(critic1.values()) > 0
    for k in critic1:
        torch.testing.assert_close(critic4[k], 4 * critic1[k], rtol=1e-3, atol=1e-9)
    for k in rest1:
        torch.testing.assert_close(rest4[k], rest1[k])


def test_the_warmup_ramp_is_off_for_half_then_linear_to_the_weight() -> None:
    assert [warmup_weight(2.0, 8, s) for s in (0, 4, 5, 6, 8, 100)] == [0.0, 0.0, 0.5, 1.0, 2.0, 2.0]
    assert warmup_weight(2.0, 0, 0) == 2.0 and warmup_weight(3.0, 8, torch.tensor(7)) == 2.25
    assert [warmup_weight(2.0, 8, s, start=3) for s in (2, 7, 8, 11)] == [0.0, 0.0, 0.5, 2.0]
    assert warmup_weight(2.0, 0, 2, start=3) == 0.0 and warmup_weight(2.0, 0, 3, start=3) == 2.0


@pytest.mark.parametrize(("layout", "side"), [("residual", 8), ("strided", 4)])
def test_both_critic_layouts_are_spectrally_normalised_and_read_their_bottom_side(layout, side) -> None:
    critic = ConditionalCritic(1, 32, [4, 8, 16], cond_dim=3, hidden=5, layout=layout)
    layers = [m for m in critic.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and all(is_parametrized(m, "weight") for m in layers)
    assert critic.hidden.in_features == 16 * side**2
    assert critic(torch.zeros(2, 1, 32, 32), torch.zeros(2, 3)).shape == (2,)


def test_the_code_defaults_are_the_preset_yaml() -> None:
    """Runs read configs/mechanism/image/vae.yaml; a mechanism built in code must behave the same once given the
    preset's weight (the code's default is off: no critic unless asked, as the HVAE preset leaves it)."""
    yaml = OmegaConf.load(Path(__file__).parents[2] / "configs/mechanism/image/vae.yaml")
    preset = OmegaConf.to_container(yaml)["config"]["adversarial"]
    assert preset["weight"] > 0 and ConditionalVAE.from_graph(GRAPH, "image", **VAE).adversarial["weight"] == 0
    built = ConditionalVAE.from_graph(GRAPH, "image", adversarial={"weight": preset["weight"]}, **VAE)
    assert built.adversarial == preset and built.critic is not None
