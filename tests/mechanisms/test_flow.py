"""Conditional normalizing flows: closed-form densities, support constraints, and fitting the MorphoMNIST
attribute SCM (t = 0.5 + Gamma(10, rate 5); i = 64 + 191 * sigmoid(0.5 * u_i + 2 t - 5), u_i ~ N(0, 1))."""

from __future__ import annotations

import math

import pytest
import torch

from imcf.data import morphomnist
from imcf.graph import CausalGraph
from imcf.mechanisms.flow import FlowMechanism
from imcf.registry import MECHANISMS
from imcf.scm import SCM
from imcf.training.fit import fit_mechanism

GRAPH = CausalGraph.from_dict(
    {"thickness": "continuous", "intensity": {"kind": "continuous", "parents": ["thickness"]}}
)
INTENSITY = {"support": "bounded", "lower": 64.0, "upper": 255.0}


def morpho_attributes(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Thickness, intensity and their noise from the known MorphoMNIST attribute SCM."""
    g = torch.Generator().manual_seed(seed)
    u_t = torch._standard_gamma(torch.full((n, 1), 10.0, dtype=torch.float64), generator=g) / 5.0
    u_i = torch.randn(n, 1, generator=g, dtype=torch.float64)
    t = 0.5 + u_t
    return {"thickness": t, "intensity": true_intensity(t, u_i), "u_t": u_t, "u_i": u_i}


def true_intensity(t: torch.Tensor, u_i: torch.Tensor) -> torch.Tensor:
    return 64 + 191 * torch.sigmoid(0.5 * u_i + 2 * t - 5)


def test_formulas_are_the_morphomnist_dataset_scm():
    """The SCM written here is the one imcf/data/morphomnist/ renders from."""
    data = morpho_attributes(100, seed=0)
    expected = morphomnist.intensity_mechanism(data["thickness"].numpy(), data["u_i"].numpy())
    torch.testing.assert_close(data["intensity"], torch.as_tensor(expected))
    thickness = (morphomnist.THICKNESS_SHIFT, morphomnist.THICKNESS_GAMMA_SHAPE, morphomnist.THICKNESS_GAMMA_RATE)
    assert thickness == (0.5, 10.0, 5.0)


def true_intensity_log_prob(i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log p(i | t) by change of variables: a = logit((i - 64) / 191) ~ N(2t - 5, 0.5^2), di/da = 191 w (1 - w)."""
    w = (i.double() - 64) / 191
    a = torch.log(w) - torch.log1p(-w)
    log_normal = -0.5 * ((a - (2 * t.double() - 5)) / 0.5) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)
    return (log_normal - torch.log(191 * w * (1 - w))).squeeze(1)


def fit(mech: FlowMechanism, data: dict[str, torch.Tensor], steps: int, lr: float = 1e-2, batch: int = 256) -> float:
    """The shared Adam loop over mech.loss with a cosine schedule; returns seconds taken."""
    parents = {p: data[p].float() for p in mech.parents}
    return fit_mechanism(mech, data[mech.node].float(), parents, steps, batch, lr, cosine=True)["seconds"]


def test_registered_as_flow():
    assert MECHANISMS["flow"] is FlowMechanism


@pytest.mark.parametrize(
    ("support", "bounds", "x"),
    [
        ("real", {}, torch.linspace(-3, 3, 7)),
        ("positive", {"lower": 0.5}, torch.linspace(0.6, 5, 7)),
        ("bounded", {"lower": 64.0, "upper": 255.0}, torch.linspace(65, 254, 7)),
    ],
)
def test_untrained_flow_density_is_the_closed_form(support, bounds, x):
    """Spline and LU layers start as the identity, so p(x) = N(s(x); loc, scale^2) |ds/dx| in closed form."""
    torch.manual_seed(0)
    mech = FlowMechanism.from_graph(GRAPH, "thickness", support=support, **bounds)
    x = x[:, None]
    mech.train()
    mech.loss(x, {})  # sets loc and scale from this batch
    mech.eval()
    if support == "real":
        s, log_jac = x.double(), torch.zeros_like(x.double())
    elif support == "positive":
        s, log_jac = torch.log(x.double() - 0.5), -torch.log(x.double() - 0.5)
    else:
        w = (x.double() - 64) / 191
        s, log_jac = torch.log(w / (1 - w)), -torch.log(191 * w * (1 - w))
    loc, scale = s.mean(), s.std()
    expected = torch.distributions.Normal(loc, scale).log_prob(s) + log_jac
    with torch.no_grad():
        torch.testing.assert_close(mech.log_prob(x, {}).double(), expected.squeeze(1), atol=1e-4, rtol=1e-5)


def test_samples_never_leave_the_support():
    torch.manual_seed(0)
    mech = FlowMechanism.from_graph(GRAPH, "intensity", transform="affine", **INTENSITY)
    t = torch.linspace(0.6, 8, 64)[:, None]
    with torch.no_grad():
        for p in mech.parameters():
            p.add_(torch.randn_like(p))
        x = mech.predict(torch.linspace(-30, 30, 64, dtype=torch.float64)[:, None], {"thickness": t})
    assert torch.all((x >= 64) & (x <= 255)) and torch.isfinite(x).all()


def test_bad_config_names_the_node():
    with pytest.raises(ValueError, match="intensity.*lower.*upper"):
        FlowMechanism.from_graph(GRAPH, "intensity", support="bounded", lower=64.0)
    with pytest.raises(ValueError, match="intensity.*support"):
        FlowMechanism.from_graph(GRAPH, "intensity", support="interval")
    with pytest.raises(ValueError, match="intensity.*transform"):
        FlowMechanism.from_graph(GRAPH, "intensity", transform="glow")
    g = CausalGraph.from_dict({"b": "binary"})
    with pytest.raises(ValueError, match="continuous"):
        FlowMechanism.from_graph(g, "b")
    # sizes that cannot build a network (num_bins 0 reached torch as "negative dimension -1")
    for key, value in (("num_bins", 0), ("hidden", 0), ("num_blocks", -1), ("num_layers", 0), ("hidden", 2.5)):
        with pytest.raises(ValueError, match=f"flow 'intensity': {key} must be whole number\\(s\\) >= 1, got {value}"):
            FlowMechanism.from_graph(GRAPH, "intensity", **{key: value})
    with pytest.raises(ValueError, match="flow 'intensity': tail_bound must be > 0, got 0"):
        FlowMechanism.from_graph(GRAPH, "intensity", tail_bound=0)


@pytest.mark.parametrize(("transform", "steps"), [("affine", 300), pytest.param("spline", 400, marks=pytest.mark.slow)])
def test_intensity_flow_matches_the_true_conditional(transform, steps):
    """Test NLL within 0.05 nats of the true p(i | t); counterfactual i under do(t) within MAE 2.0 of the truth."""
    torch.manual_seed(0)
    train, test = morpho_attributes(5000, seed=1), morpho_attributes(4000, seed=2)
    mech = FlowMechanism.from_graph(GRAPH, "intensity", transform=transform, **INTENSITY)
    fit(mech, train, steps)
    with torch.no_grad():
        nll = -mech.log_prob(test["intensity"].float(), {"thickness": test["thickness"].float()}).double().mean()
        true_nll = -true_intensity_log_prob(test["intensity"], test["thickness"]).mean()
        assert nll - true_nll <= 0.05, f"{transform}: NLL {nll:.4f} vs true {true_nll:.4f}"
        # do(t): a new thickness from the prior for every sample; the true counterfactual keeps u_i
        t_cf = morpho_attributes(4000, seed=3)["thickness"]
        u = mech.abduct(test["intensity"].float(), {"thickness": test["thickness"].float()})
        i_cf = mech.predict(u, {"thickness": t_cf.float()}).double()
        mae = (i_cf - true_intensity(t_cf, test["u_i"])).abs().mean()
    assert mae <= 2.0, f"{transform}: counterfactual intensity MAE {mae:.3f}"


def test_scm_counterfactual_with_flows_round_trips(tmp_path):
    """An SCM of flows saves, loads, and answers do(thickness = factual) with the factual intensity."""
    torch.manual_seed(0)
    data = {k: v.float() for k, v in morpho_attributes(512, seed=4).items()}
    mechs = {
        "thickness": FlowMechanism.from_graph(GRAPH, "thickness", support="positive", lower=0.5),
        "intensity": FlowMechanism.from_graph(GRAPH, "intensity", transform="affine", **INTENSITY),
    }
    fit(mechs["thickness"], data, 20)
    fit(mechs["intensity"], data, 20)
    scm = SCM(GRAPH, mechs).eval()
    loaded = SCM.load(scm.save(tmp_path / "run"))
    factual = {"thickness": data["thickness"], "intensity": data["intensity"]}
    cf = loaded.counterfactual(factual, {"thickness": data["thickness"]})
    torch.testing.assert_close(cf["intensity"], data["intensity"], atol=1e-4, rtol=0)
    samples = loaded.sample(256)
    assert torch.all(samples["thickness"] > 0.5) and torch.all(
        (samples["intensity"] > 64) & (samples["intensity"] < 255)
    )


def test_abduction_and_prediction_leave_the_mechanism_unchanged():
    """Even in training mode, only the loss may move the parent encoder's running statistics."""
    mech = FlowMechanism.from_graph(GRAPH, "intensity", **INTENSITY).train()
    data = {k: v.float() for k, v in morpho_attributes(64, seed=5).items()}
    before = {k: v.clone() for k, v in mech.state_dict().items()}
    with torch.no_grad():
        u = mech.abduct(data["intensity"], {"thickness": data["thickness"]})
        mech.predict(u, {"thickness": data["thickness"] + 1})
        mech.log_prob(data["intensity"], {"thickness": data["thickness"]})
    for k, v in mech.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    mech.loss(data["intensity"], {"thickness": data["thickness"]})
    assert mech.encoder.count.item() == 64
