"""DDIM mechanism: shared time grid, guidance algebra, null conditioning, inversion error vs steps, SCM use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imcf.graph import CausalGraph
from imcf.mechanisms.ddim import DDIM
from imcf.scm import SCM
from tests.mechanisms.ddim_helpers import MNIST_GRAPH, mnist32, psnr, tiny_trained

SMALL = {"block_out_channels": [8, 16], "norm_num_groups": 4}


def _graph(shape=(1, 32, 32)) -> CausalGraph:
    return CausalGraph.from_dict(
        {"a": "continuous", "b": "binary", "x": {"kind": "image", "shape": list(shape), "parents": ["a", "b"]}}
    )


def _parents(n: int) -> dict[str, torch.Tensor]:
    return {"a": torch.randn(n, 1), "b": (torch.arange(n) % 2).float()[:, None]}


@pytest.mark.parametrize("steps", [1, 7, 10, 25, 50, 100])
def test_inversion_and_sampling_share_one_time_grid(steps):
    mech = DDIM.from_graph(_graph(), "x", **SMALL)
    mech.scheduler.set_timesteps(steps)
    mech.inverse_scheduler.set_timesteps(steps)
    assert torch.equal(mech.inverse_scheduler.timesteps.flip(0), mech.scheduler.timesteps)
    assert not mech.scheduler.config.clip_sample and not mech.inverse_scheduler.config.clip_sample
    assert mech.scheduler.config.beta_schedule == mech.train_scheduler.config.beta_schedule


def test_guidance_is_the_classifier_free_combination():
    torch.manual_seed(0)
    mech = DDIM.from_graph(_graph(), "x", guidance_scale=3.0, parent_maps=True, **SMALL).eval()
    x, t = torch.randn(3, 1, 32, 32), torch.tensor(500)
    with torch.no_grad():
        feats = mech.condition(_parents(3), 3)
        cond = mech.eps(x, t, feats)
        null = mech.eps(x, t, feats, keep=torch.zeros(3, dtype=torch.bool))
        torch.testing.assert_close(mech.guided_eps(x, t, feats), null + 3.0 * (cond - null), atol=1e-5, rtol=1e-4)


def test_guidance_from_the_factual_amplifies_only_changed_rows():
    torch.manual_seed(0)
    mech = DDIM.from_graph(_graph(), "x", guidance_scale=3.0, **SMALL).eval()
    with torch.no_grad():
        mech.null_embedding.normal_()
        x, t = torch.randn(3, 1, 32, 32), torch.tensor(400)
        base = mech.condition(_parents(3), 3)
        feats = base.clone()
        feats[1] += 1.0  # only row 1 is intervened on
        cond, from_base = mech.eps(x, t, feats), mech.eps(x, t, base)
        guided = mech.guided_eps(x, t, feats, base)
        assert torch.equal(guided[[0, 2]], cond[[0, 2]])  # unchanged rows: the conditional prediction, bit for bit
        torch.testing.assert_close(guided[1], from_base[1] + 3.0 * (cond[1] - from_base[1]), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(guided[1], cond[1])


def _trained_pair(**kwargs):
    """The tiny trained model and a copy of it with other inference settings (same weights)."""
    from tests.mechanisms.ddim_helpers import tiny_trained

    return tiny_trained(num_inference_steps=10), tiny_trained(num_inference_steps=10, **kwargs)


def test_abduction_is_unguided_and_a_null_intervention_ignores_factual_guidance():
    x, parents = mnist32()
    x, parents = x[:6], {p: v[:6] for p, v in parents.items()}
    plain, guided = _trained_pair(guidance_scale=4.0, guidance_from="factual")
    noise = guided.abduct(x, parents)
    assert torch.equal(noise.x_T, plain.abduct(x, parents).x_T)  # inversion never uses the guidance scale
    assert torch.equal(guided.predict(noise, parents), plain.predict(noise, parents))  # null: what w = 1 gives
    cf = {"digit": parents["digit"].roll(1, dims=1), "ink": parents["ink"]}
    assert not torch.allclose(guided.predict(noise, cf), plain.predict(noise, cf))  # a real change is guided


def test_guidance_scale_one_is_the_unguided_sampler():
    """w = 1 (either base) is exactly the plain conditional DDIM sampler written out with diffusers."""
    x, parents = mnist32()
    x, parents = x[:4], {p: v[:4] for p, v in parents.items()}
    for base in ("factual", "null"):
        plain, mech = _trained_pair(guidance_scale=1.0, guidance_from=base)
        noise = mech.abduct(x, parents)
        cf = {"digit": parents["digit"].roll(3, dims=1), "ink": parents["ink"]}
        with torch.no_grad():
            feats, sample = mech.condition(cf, 4), noise.x_T
            mech.scheduler.set_timesteps(10)
            for t in mech.scheduler.timesteps:
                sample = mech.scheduler.step(mech.eps(sample, t, feats), t, sample, eta=0.0).prev_sample
        assert torch.equal(mech.predict(noise, cf), sample.clamp(-1, 1))


def test_guidance_parents_amplify_only_their_own_change():
    """Guiding only the digit: a change of ink alone is the plain model; a change of digit is guided from the
    counterfactual with the factual digit (not from the factual, whose ink differs)."""
    x, parents = mnist32()
    x, parents = x[:4], {p: v[:4] for p, v in parents.items()}
    plain, mech = _trained_pair(guidance_scale=3.0, guidance_parents=["digit"])
    _, every = _trained_pair(guidance_scale=3.0, guidance_parents="all")
    noise = mech.abduct(x, parents)
    ink = {"digit": parents["digit"], "ink": parents["ink"] + 0.1}
    assert torch.equal(mech.predict(noise, ink), plain.predict(noise, ink))
    assert not torch.allclose(every.predict(noise, ink), plain.predict(noise, ink))
    both = {"digit": parents["digit"].roll(1, dims=1), "ink": parents["ink"] + 0.1}
    with torch.no_grad():
        feats, old = mech.condition(both, 4), mech.condition(parents, 4)
        base = torch.cat([old[:, :10], feats[:, 10:]], dim=1)  # digit columns first (graph order), ink last
        xt, t = torch.randn(4, 1, 32, 32), torch.tensor(500)
        torch.testing.assert_close(mech.guided_eps(xt, t, feats, base), every.guided_eps(xt, t, feats, base))
    guided = mech.predict(noise, both)
    assert not torch.allclose(guided, plain.predict(noise, both))
    assert not torch.allclose(guided, every.predict(noise, both))
    assert DDIM.from_graph(CausalGraph.from_dict(MNIST_GRAPH), "x", guidance_parents="discrete").guidance_parents == (
        "digit",
    )


def test_a_scale_per_parent_amplifies_each_parents_change_by_its_own_scale():
    """{digit: 3, ink: 1.5}: a digit change is guided as w = 3 on the digit alone, an ink change as w = 1.5 on
    the ink alone; a row that changed both adds the two amplified changes (compositional guidance)."""
    x, parents = mnist32()
    x, parents = x[:4], {p: v[:4] for p, v in parents.items()}
    _, per = _trained_pair(guidance_parents="all", guidance_scale={"digit": 3.0, "ink": 1.5})
    _, digit = _trained_pair(guidance_parents=["digit"], guidance_scale=3.0)
    _, ink = _trained_pair(guidance_parents=["ink"], guidance_scale=1.5)
    noise = per.abduct(x, parents)
    cf = {"digit": parents["digit"].clone(), "ink": parents["ink"].clone()}
    cf["digit"][:2] = cf["digit"][:2].roll(1, dims=1)  # rows 0, 1: do(digit); rows 2, 3: do(ink)
    cf["ink"][2:] += 0.1
    out = per.predict(noise, cf)
    torch.testing.assert_close(out[:2], digit.predict(noise, cf)[:2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[2:], ink.predict(noise, cf)[2:], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out[2:], digit.predict(noise, cf)[2:])  # the ink change is guided too
    with torch.no_grad():
        old = per.condition(parents, 4)
        both = per.condition({"digit": parents["digit"].roll(1, dims=1), "ink": parents["ink"] + 0.1}, 4)
        only_digit = torch.cat([both[:, :10], old[:, 10:]], dim=1)  # digit columns first (graph order)
        only_ink = torch.cat([old[:, :10], both[:, 10:]], dim=1)
        xt, t = torch.randn(4, 1, 32, 32), torch.tensor(500)
        e_base, e_d, e_i = per.eps(xt, t, old), per.eps(xt, t, only_digit), per.eps(xt, t, only_ink)
        want = e_base + 3.0 * (e_d - e_base) + 1.5 * (e_i - e_base)
        torch.testing.assert_close(per.guided_eps(xt, t, both, old), want, atol=1e-5, rtol=1e-4)
    # equal scales on one changed parent are the single scale's guidance, and a null intervention stays exact
    _, same = _trained_pair(guidance_parents="all", guidance_scale={"digit": 3.0, "ink": 3.0})
    _, single = _trained_pair(guidance_parents="all", guidance_scale=3.0)
    torch.testing.assert_close(same.predict(noise, cf), single.predict(noise, cf), atol=1e-5, rtol=1e-4)
    plain, _ = _trained_pair()
    assert torch.equal(per.predict(noise, parents), plain.predict(noise, parents))


def test_a_guidance_interval_guides_only_the_steps_inside_it():
    """[0.5, 1]: the steps at t >= 500 are guided, the rest are the plain conditional model; an interval holding no
    step of the grid (10 steps: t = 900, 800, ..., 0) is the unguided sampler; [0, 1] is the default."""
    x, parents = mnist32()
    x, parents = x[:4], {p: v[:4] for p, v in parents.items()}
    plain, every = _trained_pair(guidance_scale=4.0)
    _, half = _trained_pair(guidance_scale=4.0, guidance_interval=[0.5, 1.0])
    _, none = _trained_pair(guidance_scale=4.0, guidance_interval=[0.95, 1.0])
    _, whole = _trained_pair(guidance_scale=4.0, guidance_interval=(0, 1))
    noise = half.abduct(x, parents)
    cf = {"digit": parents["digit"].roll(1, dims=1), "ink": parents["ink"]}
    assert torch.equal(none.predict(noise, cf), plain.predict(noise, cf))
    assert torch.equal(whole.predict(noise, cf), every.predict(noise, cf))
    with torch.no_grad():
        feats, base, sample = half.condition(cf, 4), half.condition(parents, 4), noise.x_T
        half.scheduler.set_timesteps(10)
        for t in half.scheduler.timesteps:
            eps = half.guided_eps(sample, t, feats, base) if t >= 500 else half.eps(sample, t, feats)
            sample = half.scheduler.step(eps, t, sample, eta=0.0).prev_sample
    out = half.predict(noise, cf)
    assert torch.equal(out, sample.clamp(-1, 1))
    assert not torch.allclose(out, plain.predict(noise, cf)) and not torch.allclose(out, every.predict(noise, cf))
    assert torch.equal(half.predict(noise, parents), plain.predict(noise, parents))  # a null intervention stays exact


def test_classic_guidance_and_prior_draws_guide_from_the_null():
    x, parents = mnist32()
    x, parents = x[:4], {p: v[:4] for p, v in parents.items()}
    plain, null = _trained_pair(guidance_scale=3.0, guidance_from="null")
    _, factual = _trained_pair(guidance_scale=3.0, guidance_from="factual")
    noise = null.abduct(x, parents)
    # classic CFG changes even a null intervention; a bare x_T tensor has no factual to guide from
    assert not torch.allclose(null.predict(noise, parents), plain.predict(noise, parents))
    torch.testing.assert_close(factual.predict(noise.x_T, parents), null.predict(noise, parents))
    torch.manual_seed(1)
    prior = factual.sample_noise(4)
    assert prior.reference is None
    torch.testing.assert_close(factual.predict(prior, parents), null.predict(prior, parents))


def test_cfg_dropout_drops_parents_at_the_configured_rate(monkeypatch):
    mech = DDIM.from_graph(_graph(), "x", cfg_dropout=0.25, **SMALL).train()
    seen = []
    real = mech.eps
    monkeypatch.setattr(mech, "eps", lambda x_t, t, f, keep=None: seen.append(keep) or real(x_t, t, f, keep))
    torch.manual_seed(0)
    for _ in range(8):
        mech.loss(torch.rand(256, 1, 32, 32) * 2 - 1, _parents(256))
    dropped = 1 - torch.cat(seen).float().mean().item()
    assert abs(dropped - 0.25) < 0.03, dropped  # 2,048 rows: 3 standard deviations is 0.029
    mech.eval()
    seen.clear()
    mech.loss(torch.rand(8, 1, 32, 32) * 2 - 1, _parents(8))
    assert seen == [None]  # evaluation losses never drop the parents


def _gain_graph() -> CausalGraph:
    return CausalGraph.from_dict(
        {"d": "binary", "i": "continuous", "x": {"kind": "image", "shape": [1, 32, 32], "parents": ["d", "i"]}}
    )


def test_a_gain_parent_rescales_the_image_exactly_and_is_hidden_from_the_network():
    torch.manual_seed(0)
    mech = DDIM.from_graph(
        _gain_graph(), "x", gain_parents=["i"], parent_ranges={"i": [0, 200]}, clamp_output=False,
        num_inference_steps=4, **SMALL,
    ).eval()  # fmt: skip
    assert mech.shape_parents == ("d",) and mech.encoder.dim == 1 and float(mech.gain_reference) == 200.0
    d, i = torch.tensor([[0.0], [1.0], [1.0]]), torch.tensor([[100.0], [150.0], [60.0]])
    x = torch.rand(3, 1, 32, 32) * 1.2 - 1
    noise = mech.abduct(x, {"d": d, "i": i})
    same, brighter = mech.predict(noise, {"d": d, "i": i}), mech.predict(noise, {"d": d, "i": 2 * i})
    torch.testing.assert_close(brighter + 1, 2 * (same + 1), atol=1e-5, rtol=1e-5)  # x' = g'/g (x + 1) - 1
    torch.testing.assert_close(mech.gain({"d": d, "i": i}).flatten(), i.flatten() / 200)
    with torch.no_grad():  # the network never sees the gain parent
        torch.testing.assert_close(mech.condition({"d": d, "i": i}, 3), mech.condition({"d": d, "i": 2 * i}, 3))
    with pytest.raises(ValueError, match=r"'x': a power-law gain needs positive gain parents; 'i' is -100 in row 0"):
        mech.predict(noise, {"d": d, "i": -i})


def test_a_gain_parent_without_a_range_is_referred_to_its_training_mean():
    mech = DDIM.from_graph(_gain_graph(), "x", gain_parents=["i"], **SMALL).train()
    values = [torch.full((8, 1), 100.0), torch.full((24, 1), 200.0)]
    for v in values:
        mech.loss(torch.rand(v.shape[0], 1, 32, 32) * 2 - 1, {"d": torch.zeros(v.shape[0], 1), "i": v})
    assert float(mech.gain_reference) == pytest.approx(175.0) and int(mech.gain_count) == 32
    mech.eval()
    mech.gain({"d": torch.zeros(2, 1), "i": torch.full((2, 1), 50.0)})
    assert float(mech.gain_reference) == pytest.approx(175.0)  # frozen outside training


def test_null_condition_ignores_the_parents():
    torch.manual_seed(0)
    mech = DDIM.from_graph(_graph(), "x", parent_maps=True, **SMALL).eval()
    with torch.no_grad():
        mech.null_embedding.normal_()  # a trained, non-zero null embedding
        x, t, drop = torch.randn(2, 1, 32, 32), torch.tensor(300), torch.zeros(2, dtype=torch.bool)
        f1, f2 = mech.condition(_parents(2), 2), mech.condition(_parents(2), 2)
        torch.testing.assert_close(mech.eps(x, t, f1, drop), mech.eps(x, t, f2, drop))
        assert not torch.allclose(mech.eps(x, t, f1), mech.eps(x, t, f2))


def test_cfg_dropout_trains_the_null_embedding():
    mech = DDIM.from_graph(_graph(), "x", cfg_dropout=0.5, **SMALL).train()
    torch.manual_seed(0)
    mech.loss(torch.rand(16, 1, 32, 32) * 2 - 1, _parents(16))["loss"].backward()
    assert mech.null_embedding.grad is not None and mech.null_embedding.grad.abs().sum() > 0


def test_reconstruction_error_falls_as_steps_grow():
    x, parents = mnist32()
    pick = slice(7, None, 1250)
    x, parents = x[pick], {p: v[pick] for p, v in parents.items()}
    quality = []
    for steps in (5, 10, 25):
        mech = tiny_trained(num_inference_steps=steps)
        quality.append(psnr(mech.predict(mech.abduct(x, parents), parents), x).mean().item())
    assert quality[0] < quality[1] < quality[2], quality
    assert quality[2] > 27.0, quality  # measured ~30 dB after 100 training steps


def test_root_image_node_samples_and_reconstructs_shapes():
    g = CausalGraph.from_dict({"x": {"kind": "image", "shape": [3, 64, 64]}})
    mech = DDIM.from_graph(g, "x", num_inference_steps=2, **SMALL).eval()
    s = mech.sample({}, n=2)
    assert s.shape == (2, 3, 64, 64) and s.abs().max() <= 1.0
    noise = mech.abduct(s, {})
    assert noise.x_T.shape == s.shape and noise.reference is None


def test_scm_counterfactual_and_save_load(tmp_path):
    from imcf.mechanisms.linear_gaussian import LinearGaussian

    g = CausalGraph.from_dict({"a": "continuous", "x": {"kind": "image", "shape": [1, 32, 32], "parents": ["a"]}})
    torch.manual_seed(0)
    scm = SCM(g, {"a": LinearGaussian.from_graph(g, "a"), "x": DDIM.from_graph(g, "x", num_inference_steps=3, **SMALL)})
    scm.eval()
    factual = scm.sample(2)
    cf = scm.counterfactual(factual, {"a": torch.tensor([[2.0], [-2.0]])})
    assert cf["x"].shape == (2, 1, 32, 32) and not torch.equal(cf["x"], factual["x"])
    scm.save(tmp_path / "run")
    loaded = SCM.load(tmp_path / "run").eval()
    torch.testing.assert_close(
        loaded.counterfactual(factual, {"a": 2.0})["x"], scm.counterfactual(factual, {"a": 2.0})["x"]
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_out_channels": [8, 16, 16, 16, 16, 16, 16]}, "divisible by 2"),
        ({"block_out_channels": [12, 16], "norm_num_groups": 8}, "norm_num_groups"),
        ({"block_out_channels": "abc"}, r"ddim 'x': block_out_channels must be whole number\(s\) >= 1, got 'abc'"),
        ({"block_out_channels": []}, r"ddim 'x': block_out_channels must be whole number\(s\) >= 1, got \[\]"),
        ({"cfg_dropout": 1.0, **SMALL}, "cfg_dropout"),
        ({"num_inference_steps": 0, **SMALL}, "num_inference_steps"),
        ({"guidance_from": "uncond", **SMALL}, "guidance_from"),
        ({"guidance_parents": "some", **SMALL}, "guidance_parents must be"),
        ({"gain_parents": ["b"], **SMALL}, r"gain_parents \['b'\] are not continuous parents"),
        ({"guidance_parents": ["a", "z"], **SMALL}, r"guidance_parents \['z'\] are not parents"),
        ({"guidance_scale": "high", **SMALL}, "guidance_scale must be a number"),
        ({"guidance_scale": {"a": 2.0}, **SMALL}, r"no scale for guided parent\(s\) \['b'\]"),
        ({"guidance_scale": {"a": 2, "b": 1, "z": 1}, **SMALL}, r"guidance_scale names \['z'\]"),
        ({"guidance_scale": {"a": 2}, "guidance_parents": ["a"], "gain_parents": ["a"], **SMALL}, r"names \['a'\]"),
        ({"guidance_scale": {"a": 2, "b": 1}, "guidance_from": "null", **SMALL}, "per parent needs guidance_from"),
        ({"guidance_scale": -2.0, **SMALL}, r"guidance_scale must be a number >= 0, got -2.0"),
        ({"guidance_scale": {"a": 2, "b": -1}, **SMALL}, r"guidance_scale.b must be a number >= 0"),
        ({"guidance_interval": [0.6, 0.4], **SMALL}, r"guidance_interval must be \[lo, hi\].*got \[0.6, 0.4\]"),
        ({"guidance_interval": [0.5], **SMALL}, r"guidance_interval must be \[lo, hi\]"),
        ({"guidance_interval": "late", **SMALL}, r"guidance_interval must be \[lo, hi\].*got 'late'"),
        ({"guidance_interval": [0, 1.5], **SMALL}, r"guidance_interval must be"),
        ({"beta_schedule": "cosine", **SMALL}, r"beta_schedule must be one of .*'squaredcos_cap_v2'.*got 'cosine'"),
        ({"num_train_timesteps": 0, **SMALL}, r"num_train_timesteps must be whole number\(s\) >= 1, got 0"),
        ({"parent_ranges": {"a": [1, 1]}, **SMALL}, r"parent_ranges.a must be \[lo, hi\] with lo < hi"),
        ({"clamp_output": "false", **SMALL}, r"ddim 'x': clamp_output must be true or false, got 'false'"),
        ({"parent_maps": "true", **SMALL}, r"ddim 'x': parent_maps must be true or false"),
        ({"attention": 0, **SMALL}, r"ddim 'x': attention must be true or false, got 0"),
    ],
)
def test_bad_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDIM.from_graph(_graph(), "x", **kwargs)


def test_wrong_kind_and_shape_are_named():
    with pytest.raises(ValueError, match="'a'"):
        DDIM.from_graph(_graph(), "a")
    mech = DDIM.from_graph(_graph(), "x", num_inference_steps=1, **SMALL)
    with pytest.raises(ValueError, match=r"'x'.*\(2, 3, 32, 32\)"):
        mech.abduct(torch.zeros(2, 3, 32, 32), _parents(2))


# ----- slow: real training runs -----
def _train_default(graph: CausalGraph, node: str, x, parents, steps: int):
    """The default CPU config (configs/mechanism/image/ddim.yaml) trained with a plain loop over mech.loss."""
    import yaml

    from tests.mechanisms.ddim_helpers import train

    spec = yaml.safe_load((Path(__file__).parents[2] / "configs/mechanism/image/ddim.yaml").read_text())
    torch.manual_seed(0)
    mech = DDIM.from_graph(graph, node, **spec["config"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(mech, x, parents, steps=steps, batch=64, lr=2e-3)
    finally:
        torch.set_num_threads(threads)
    return mech


@pytest.mark.slow
def test_inversion_reconstructs_at_30db_with_50_steps():
    """Default config, 500 training steps on 4500 MNIST digits; 50-step round trip on 16 held-out digits."""
    from tests.mechanisms.ddim_helpers import MNIST_GRAPH

    x, parents = mnist32()
    mech = _train_default(
        CausalGraph.from_dict(MNIST_GRAPH), "x", x[:4500], {p: v[:4500] for p, v in parents.items()}, 500
    )
    held = slice(4500, 5000, 31)
    xh, ph = x[held][:16], {p: v[held][:16] for p, v in parents.items()}
    mech.num_inference_steps = 50
    quality = psnr(mech.predict(mech.abduct(xh, ph), ph), xh)
    assert quality.mean() >= 30.0, quality


@pytest.mark.slow
def test_counterfactual_thickness_moves_toward_target(tmp_path):
    """Embedded MorphoMNIST: do(thickness) with intensity following the true SCM; the counterfactual's measured
    thickness is closer to the target than the factual's for >= 70% of 100 test digits."""
    import numpy as np

    from imcf.data import morphomnist as mm
    from imcf.data.morphomnist.dataset import MorphoMNIST

    train_set = MorphoMNIST(root=str(tmp_path), split="train")
    test_set = MorphoMNIST(root=str(tmp_path), split="test")
    g = CausalGraph.from_yaml(Path(__file__).parents[2] / "configs/graph/morphomnist.yaml")
    batch = {k: v for k, v in train_set._values.items() if not k.startswith("_")}
    parents = {p: batch[p] for p in g.parents("image")}
    mech = _train_default(g, "image", batch["image"], parents, 3000)
    mech.num_inference_steps = 50

    n = 100
    fact = {k: v[:n] for k, v in test_set._values.items()}
    t = fact["thickness"][:, 0].numpy().astype(np.float64)
    target = np.where(t < 2.5, t + 2.0, t - 1.5).clip(1.0, 6.0)
    u_i = fact["_u_intensity"][:, 0].numpy().astype(np.float64)
    cf_parents = {
        "thickness": torch.tensor(target, dtype=torch.float32)[:, None],
        "intensity": torch.tensor(mm.intensity_mechanism(target, u_i), dtype=torch.float32)[:, None],
        "digit": fact["digit"],
    }
    noise = mech.abduct(fact["image"], {p: fact[p] for p in g.parents("image")})
    cf = mech.predict(noise, cf_parents)
    measured_cf = mm.measure_batch(cf.numpy(), "signed", features=("thickness",))["thickness"]
    measured_f = mm.measure_batch(fact["image"].numpy(), "signed", features=("thickness",))["thickness"]
    closer = np.abs(measured_cf - target) < np.abs(measured_f - target)
    assert closer.mean() >= 0.7, f"{closer.mean():.2f} of counterfactuals moved toward the target thickness"
