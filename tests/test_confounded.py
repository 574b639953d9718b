"""Confounded c-components: shared noise in sampling, abduction, counterfactuals, joint training, save/load."""

import pytest
import torch

from imcf.graph import CausalGraph
from imcf.mechanisms.component import ConfoundedComponent, noise_key
from imcf.mechanisms.linear_gaussian import LinearGaussian
from imcf.scm import SCM
from imcf.training.module import UnitModule

# x -> a, x -> b, a <-> b (a hidden common cause of a and b)
GRAPH = {
    "nodes": {
        "x": {"kind": "continuous"},
        "a": {"kind": "continuous", "parents": ["x"]},
        "b": {"kind": "continuous", "parents": ["x"]},
        "y": {"kind": "continuous", "parents": ["b"]},
    },
    "confounded": [["a", "b"]],
}


def _true_scm() -> SCM:
    """a = x + u_a;  b = -x + 0.6 u_a + 0.8 u_b  (so cov(a, b | x) = 0.6);  y = 2 b + 0.1 u_y."""
    g = CausalGraph.from_dict(GRAPH)
    comp = ConfoundedComponent(g, ("a", "b"), mode="autoregressive")
    mechs = {
        "x": LinearGaussian.from_graph(g, "x", learnable=False),
        "a": LinearGaussian.from_graph(g, "a", comp.extras("a"), weights={"x": 1.0}, learnable=False),
        "b": LinearGaussian.from_graph(
            g, "b", comp.extras("b"), weights={"x": -1.0, noise_key("a"): 0.6}, sigma=0.8, learnable=False
        ),
        "y": LinearGaussian.from_graph(g, "y", weights={"b": 2.0}, sigma=0.1, learnable=False),
    }
    return SCM(g, mechs, components={"a+b": comp})


def test_members_read_the_shared_noise():
    scm = _true_scm()
    assert scm.mechanisms["a"].parents == ("x",)
    assert scm.mechanisms["b"].parents == ("x", "__u_a")
    assert scm.component("a") is scm.component("b") and scm.component("x") is None


def test_sampling_reproduces_the_confounded_covariance():
    torch.manual_seed(0)
    s = _true_scm().intervene({"x": 0.0}, 100_000)
    cov = torch.cov(torch.cat([s["a"], s["b"]], 1).T)
    torch.testing.assert_close(cov, torch.tensor([[1.0, 0.6], [0.6, 1.0]]), atol=0.02, rtol=0)


def test_counterfactual_keeps_the_confounder_of_an_intervened_member():
    torch.manual_seed(1)
    scm = _true_scm()
    f = scm.sample(512)
    cf = scm.counterfactual(f, {"a": 5.0, "x": 1.0})
    u_a = f["a"] - f["x"]  # the factual confounder noise persists although a is set
    u_b = (f["b"] + f["x"] - 0.6 * u_a) / 0.8
    torch.testing.assert_close(cf["b"], -1.0 + 0.6 * u_a + 0.8 * u_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(cf["y"], f["y"] + 2 * (cf["b"] - f["b"]), atol=1e-4, rtol=0)
    null = scm.counterfactual(f, {"x": f["x"]})
    for v in GRAPH["nodes"]:
        torch.testing.assert_close(null[v], f[v], atol=1e-5, rtol=0)


def test_counterfactual_needs_the_whole_component():
    scm = _true_scm()
    f = scm.sample(4)
    with pytest.raises(KeyError, match=r"needs node\(s\) \['a'\]"):
        scm.counterfactual({k: v for k, v in f.items() if k != "a"}, {"x": 0.0})


def test_build_save_load_round_trip(tmp_path):
    g = CausalGraph.from_dict(GRAPH)
    specs = {n: {"family": "linear_gaussian"} for n in GRAPH["nodes"]}
    specs["_components"] = {"*": {"mode": "latent", "latent_dim": 2}}
    scm = SCM.build(g, specs)
    assert scm.mechanisms["a"].parents == ("x", "__z_a+b_0", "__z_a+b_1")
    for p in scm.parameters():
        torch.nn.init.normal_(p)
    scm.save(tmp_path)
    assert (tmp_path / "a+b.ckpt").is_file()
    loaded = SCM.load(tmp_path)
    torch.manual_seed(2)
    f = _true_scm().sample(16)
    a, b = scm.eval().counterfactual(f, {"x": 0.5}), loaded.eval().counterfactual(f, {"x": 0.5})
    for v in GRAPH["nodes"]:
        torch.testing.assert_close(a[v], b[v])


def _fit(mode: str, steps: int = 600) -> SCM:
    torch.manual_seed(3)
    data = _true_scm().sample(4000)
    g = CausalGraph.from_dict(GRAPH)
    specs = {n: {"family": "linear_gaussian"} for n in GRAPH["nodes"]}
    specs["_components"] = {"*": {"mode": mode, "latent_dim": 1, "hidden": 32}}
    scm = SCM.build(g, specs)
    unit = UnitModule({n: scm.mechanisms[n] for n in ("a", "b")}, component=scm.components["a+b"])
    opt = torch.optim.Adam(unit.parameters(), lr=2e-2)
    unit.log = lambda *args, **kwargs: None  # outside a Trainer
    for _ in range(steps):
        idx = torch.randint(0, 4000, (256,))
        loss = unit._losses({k: v[idx] for k, v in data.items()}, "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return scm.eval()


@pytest.mark.parametrize("mode", ["autoregressive", "latent"])
def test_joint_training_learns_the_confounded_covariance(mode):
    scm = _fit(mode)
    torch.manual_seed(4)
    s = scm.intervene({"x": 0.0}, 20_000)
    cov = torch.cov(torch.cat([s["a"], s["b"]], 1).T)
    torch.testing.assert_close(cov, torch.tensor([[1.0, 0.6], [0.6, 1.0]]), atol=0.12, rtol=0)


def test_counterfactual_records_identifiability_and_strict_refuses():
    g = CausalGraph.from_dict(
        {"nodes": {"a": "continuous", "b": {"kind": "continuous", "parents": ["a"]}}, "confounded": [["a", "b"]]}
    )
    scm = SCM.build(g, {"a": {"family": "linear_gaussian"}, "b": {"family": "linear_gaussian"}})
    f = scm.sample(4)
    with pytest.warns(UserWarning, match="not identifiable"):
        scm.counterfactual(f, {"a": 1.0})
    assert scm.verdicts[("a",)]["status"] == "not_identified"
    scm.strict = True
    with pytest.raises(ValueError, match="confounding path b <-> a"):
        scm.counterfactual(f, {"a": 1.0})
    ok = _true_scm()
    ok.strict = True
    ok.counterfactual(ok.sample(4), {"b": 0.0})  # y's answer rests on its mechanism, not on the confounder
    assert ok.verdicts[("b",)]["status"] == "rests_on_mechanism"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"hidden": -1}, r"mechanism.confounder.hidden must be a whole number >= 1, got -1"),
        ({"latent_dim": 0}, r"mechanism.confounder.latent_dim must be a whole number >= 1, got 0"),
        ({"latent_dim": "abc"}, r"mechanism.confounder.latent_dim must be a whole number >= 1, got 'abc'"),
        ({"pool": 2.5}, r"mechanism.confounder.pool must be a whole number >= 1, got 2.5"),
        ({"kl_weight": -1.0}, r"mechanism.confounder.kl_weight must be a number >= 0, got -1.0"),
    ],
)
def test_confounder_options_out_of_range_are_named(option, message):
    """hidden=-1 was torch's negative-dimension traceback; latent_dim=0 and kl_weight=-1 trained silently."""
    with pytest.raises(ValueError, match=message):
        ConfoundedComponent(CausalGraph.from_dict(GRAPH), ("a", "b"), mode="latent", **option)
