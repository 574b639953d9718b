"""Discrete mechanisms: exact reconstruction, posterior noise that marginalises to the prior, closed-form
counterfactual probabilities, determinism, and the synthetic-faces beard mechanism (beard = 1[u_b < f(young, male)])."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from imcf.data import faces
from imcf.graph import CausalGraph
from imcf.mechanisms.discrete import DiscreteMechanism
from imcf.registry import MECHANISMS
from imcf.scm import SCM
from imcf.training.fit import fit_mechanism

GRAPH = CausalGraph.from_dict(
    {
        "young": "binary",
        "male": "binary",
        "colour": "categorical(4)",
        "beard": {"kind": "binary", "parents": ["young", "male"]},
        "style": {"kind": "categorical(5)", "parents": ["young", "colour"]},
    }
)
#: P(beard = 1 | young, male) of the synthetic faces SCM: beards mostly on older men
BEARD_PROB = {(0, 0): 0.04, (0, 1): 0.80, (1, 0): 0.02, (1, 1): 0.25}
P_YOUNG, P_MALE = 0.6, 0.5
EULER_GAMMA = 0.5772156649


def test_table_is_the_faces_dataset_scm():
    """The table written here is the one imcf/data/faces.py renders from."""
    assert faces.BEARD_PROB == BEARD_PROB and (faces.P_YOUNG, faces.P_MALE) == (P_YOUNG, P_MALE)


def beard_prob(young: torch.Tensor, male: torch.Tensor) -> torch.Tensor:
    table = torch.tensor([[BEARD_PROB[(0, 0)], BEARD_PROB[(0, 1)]], [BEARD_PROB[(1, 0)], BEARD_PROB[(1, 1)]]])
    return table[young.long(), male.long()]


def faces_attributes(n: int, seed: int) -> dict[str, torch.Tensor]:
    """young, male, beard and the beard's own noise u_b, sampled from the known SCM."""
    g = torch.Generator().manual_seed(seed)
    young = (torch.rand(n, 1, generator=g) < P_YOUNG).float()
    male = (torch.rand(n, 1, generator=g) < P_MALE).float()
    u_b = torch.rand(n, 1, generator=g)
    return {"young": young, "male": male, "beard": (u_b < beard_prob(young, male)).float(), "u_b": u_b}


def fit(mech: DiscreteMechanism, data: dict[str, torch.Tensor], steps: int = 300, lr: float = 3e-2) -> None:
    """The shared Adam loop over mech.loss on random minibatches, cosine learning-rate decay."""
    parents = {p: data[p] for p in mech.parents}
    fit_mechanism(mech, data[mech.node], parents, steps, batch_size=2048, lr=lr, cosine=True)


def test_registered_as_discrete():
    assert MECHANISMS["discrete"] is DiscreteMechanism


@pytest.mark.parametrize("mode", ["gumbel", "threshold"])
@pytest.mark.parametrize("node", ["beard", "style"])
def test_abduction_reconstructs_exactly_even_for_extreme_logits(mode, node):
    torch.manual_seed(0)
    mech = DiscreteMechanism.from_graph(GRAPH, node, mode=mode, seed=0).eval()
    with torch.no_grad():
        for p in mech.parameters():
            p.mul_(60.0)  # logits in the hundreds: most observed values are (numerically) impossible
    n = 4096
    parents = {
        "young": torch.randint(0, 2, (n, 1)).float(),
        "male": torch.randint(0, 2, (n, 1)).float(),
        "colour": F.one_hot(torch.randint(0, 4, (n,)), 4).float(),
    }
    parents = {p: parents[p] for p in mech.parents}
    x = torch.randint(0, 2, (n, 1)).float() if node == "beard" else F.one_hot(torch.randint(0, 5, (n,)), 5).float()
    with torch.no_grad():
        logp = mech.logits(parents, n)
        assert logp.min() < -50  # the check really covers extreme logits
        rec = mech.predict(mech.abduct(x, parents), parents)
    assert torch.equal(rec, x)


@pytest.mark.parametrize("mode", ["gumbel", "threshold"])
def test_posterior_noise_marginalises_to_the_prior(mode):
    """x ~ P and noise ~ posterior(. | x) give noise ~ prior: Gumbel(0, 1) iid, or U(0, 1)."""
    torch.manual_seed(0)
    g = CausalGraph.from_dict({"c": "categorical(3)"})
    mech = DiscreteMechanism.from_graph(g, "c", mode=mode, seed=1).eval()
    with torch.no_grad():
        mech.root_logits.copy_(torch.tensor([1.5, 0.0, -1.0]))
        x = mech.sample({}, n=40000)
        noise = mech.abduct(x, {}).double()
    if mode == "gumbel":
        cdf = torch.exp(-torch.exp(-noise))
        assert noise.mean(0).sub(EULER_GAMMA).abs().max() < 0.03
        assert noise.std(0).sub(math.pi / math.sqrt(6)).abs().max() < 0.03
        assert torch.corrcoef(noise.T).sub(torch.eye(3, dtype=noise.dtype)).abs().max() < 0.03
    else:
        cdf = noise
    grid = torch.linspace(0.05, 0.95, 19, dtype=cdf.dtype)
    ks = ((cdf[:, :, None] <= grid).double().mean(0) - grid).abs().max()
    assert ks < 0.015, f"{mode}: KS distance of the posterior noise to the prior {ks:.4f}"


@pytest.mark.parametrize("mode", ["gumbel", "threshold"])
def test_binary_counterfactual_probabilities_are_the_closed_form(mode):
    """Monotone binary SCM (both modes): P(x'=1 | x=1) = min(1, p'/p), P(x'=1 | x=0) = max(0, (p'-p)/(1-p))."""
    torch.manual_seed(0)
    g = CausalGraph.from_dict({"a": "binary", "b": {"kind": "binary", "parents": ["a"]}})
    mech = DiscreteMechanism.from_graph(g, "b", mode=mode, num_layers=0, seed=2).eval()
    with torch.no_grad():
        mech.net[0].weight.fill_(1.5)  # encoder maps a to {-1, 1}: logits -1.4 and 1.6
        mech.net[0].bias.fill_(0.1)
    n = 40000
    for a, a_cf in [(0.0, 1.0), (1.0, 0.0)]:
        pa, pa_cf = {"a": torch.full((n, 1), a)}, {"a": torch.full((n, 1), a_cf)}
        p, p_cf = mech.probs(pa, n)[0, 1].item(), mech.probs(pa_cf, n)[0, 1].item()
        for x in (0.0, 1.0):
            with torch.no_grad():
                cf = mech.predict(mech.abduct(torch.full((n, 1), x), pa), pa_cf)
            expected = min(1.0, p_cf / p) if x == 1 else max(0.0, (p_cf - p) / (1 - p))
            assert abs(cf.mean().item() - expected) < 0.01, (mode, a, x, cf.mean().item(), expected)


def test_gumbel_max_counterfactual_stability():
    """Raising only the observed class's logit never changes a Gumbel-max counterfactual."""
    torch.manual_seed(0)
    g = CausalGraph.from_dict({"c": "categorical(5)"})
    mech = DiscreteMechanism.from_graph(g, "c", seed=3).eval()
    n = 5000
    with torch.no_grad():
        mech.root_logits.copy_(torch.randn(5))
        x = mech.sample({}, n=n)
        noise = mech.abduct(x, {})
        mech.root_logits.add_(2.0 * F.one_hot(torch.tensor(2), 5))
        cf = mech.predict(noise, {})
    observed_two = x[:, 2] == 1
    assert torch.equal(cf[observed_two], x[observed_two])


def test_same_seed_same_abduction_and_generator_control():
    torch.manual_seed(0)
    a = DiscreteMechanism.from_graph(GRAPH, "style", seed=7).eval()
    b = DiscreteMechanism.from_graph(GRAPH, "style", seed=7).eval()
    b.load_state_dict(a.state_dict())
    n = 256
    parents = {"young": torch.randint(0, 2, (n, 1)).float(), "colour": F.one_hot(torch.randint(0, 4, (n,)), 4).float()}
    x = F.one_hot(torch.randint(0, 5, (n,)), 5).float()
    with torch.no_grad():
        torch.testing.assert_close(a.abduct(x, parents), b.abduct(x, parents))
        first = a.abduct(x, parents, generator=torch.Generator().manual_seed(11))
        again = a.abduct(x, parents, generator=torch.Generator().manual_seed(11))
        other = a.abduct(x, parents, generator=torch.Generator().manual_seed(12))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)


def test_bad_values_and_config_name_the_node():
    with pytest.raises(ValueError, match="beard.*mode"):
        DiscreteMechanism.from_graph(GRAPH, "beard", mode="softmax")
    mech = DiscreteMechanism.from_graph(GRAPH, "beard")
    parents = {"young": torch.zeros(2, 1), "male": torch.ones(2, 1)}
    with pytest.raises(ValueError, match="beard.*0 or 1"):
        mech.abduct(torch.tensor([[0.5], [1.0]]), parents)
    with pytest.raises(ValueError, match="beard.*noise"):
        mech.predict(torch.zeros(2, 1), parents)
    with pytest.raises(ValueError, match="binary or categorical"):
        DiscreteMechanism.from_graph(CausalGraph.from_dict({"t": "continuous"}), "t")


def expected_agreement(p: torch.Tensor, p_cf: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """P(sampled counterfactual == true counterfactual) per sample, when u is drawn from its exact posterior."""
    q = torch.where(x == 1, (p_cf / p).clamp(max=1), ((p_cf - p) / (1 - p)).clamp(min=0))
    return q**2 + (1 - q) ** 2


@pytest.mark.parametrize("mode", ["threshold", "gumbel"])
def test_faces_beard_counterfactuals_match_the_true_scm(mode):
    """Fitted on samples of the faces SCM, the beard mechanism answers do(male) / do(young) like the SCM does.

    The true counterfactual beard 1[u_b < f(young', male')] is not identified from (beard, young, male): where
    it is (beard stays when f rises, no beard stays when f falls) agreement must be exact; elsewhere the
    sampled counterfactual agrees with the truth as often as exact posterior sampling from the true SCM can.
    """
    torch.manual_seed(0)
    train, test = faces_attributes(20000, seed=1), faces_attributes(20000, seed=2)
    mechs = {n: DiscreteMechanism.from_graph(GRAPH, n, mode=mode, seed=5) for n in ("young", "male", "beard")}
    fit(mechs["beard"], train)
    graph = CausalGraph.from_dict(
        {"young": "binary", "male": "binary", "beard": {"kind": "binary", "parents": ["young", "male"]}}
    )
    scm = SCM(graph, mechs).eval()
    with torch.no_grad():
        for (y, m), p in BEARD_PROB.items():
            learned = mechs["beard"].probs({"young": torch.tensor([[float(y)]]), "male": torch.tensor([[float(m)]])})
            assert abs(learned[0, 1].item() - p) < 0.025, ((y, m), learned[0, 1].item(), p)
    factual = {k: test[k] for k in ("young", "male", "beard")}
    for node in ("male", "young"):
        do = {node: 1 - test[node]}
        cf = scm.counterfactual(factual, do)
        cf_parents = {"young": cf["young"], "male": cf["male"]}
        p, p_cf = beard_prob(test["young"], test["male"]), beard_prob(cf_parents["young"], cf_parents["male"])
        truth = (test["u_b"] < p_cf).float()
        agree = cf["beard"] == truth
        identified = ((test["beard"] == 1) & (p_cf >= p)) | ((test["beard"] == 0) & (p_cf <= p))
        assert agree[identified].all(), f"{mode} do({node}): identified counterfactuals must match exactly"
        ceiling = expected_agreement(p, p_cf, test["beard"]).mean().item()
        rate = agree.float().mean().item()
        assert rate >= ceiling - 0.015, f"{mode} do({node}): agreement {rate:.4f} vs exact-posterior {ceiling:.4f}"


def test_nodes_sharing_a_seed_draw_independent_noise():
    young = DiscreteMechanism.from_graph(GRAPH, "young", mode="threshold", seed=0)
    male = DiscreteMechanism.from_graph(GRAPH, "male", mode="threshold", seed=0)
    a, b = young.sample_noise(2000), male.sample_noise(2000)
    assert abs(torch.corrcoef(torch.cat([a, b], 1).T)[0, 1].item()) < 0.1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hidden": 0}, r"discrete 'd': hidden must be whole number\(s\) >= 1, got 0"),
        ({"num_layers": -1}, r"discrete 'd': num_layers must be whole number\(s\) >= 0, got -1"),
        ({"parent_ranges": "abc"}, r"discrete 'd': parent_ranges must be a mapping \{parent: \[lo, hi\]\}, got 'abc'"),
        ({"parent_ranges": {"t": [3, 1]}}, r"discrete 'd': parent_ranges.t must be \[lo, hi\] with lo < hi"),
    ],
)
def test_discrete_options_that_cannot_build_are_named(config, message):
    """hidden 0 and num_layers -1 built silently (a head with no hidden units, a linear one); a string for
    parent_ranges failed as `'str' object has no attribute 'items'`."""
    g = CausalGraph.from_dict({"t": "continuous", "d": {"kind": "categorical(3)", "parents": ["t"]}})
    with pytest.raises(ValueError, match=message):
        DiscreteMechanism.from_graph(g, "d", **config)
