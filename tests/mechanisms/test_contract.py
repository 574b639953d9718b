"""The shared Mechanism contract (ARCHITECTURE.md), run against every registered family."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

import imcf.mechanisms  # noqa: F401  (fills the registry)
import tests.mechanisms.cases as cases_pkg
from imcf.registry import MECHANISMS
from tests.mechanisms.contract import ContractCase


def _factories() -> dict[str, list]:
    out = {}
    for info in pkgutil.iter_modules(cases_pkg.__path__):
        mod = importlib.import_module(f"{cases_pkg.__name__}.{info.name}")
        out[info.name] = list(mod.CASES)
    return out


FACTORIES = _factories()
ALL = [(fam, i, f) for fam, fs in FACTORIES.items() for i, f in enumerate(fs)]


def test_every_registered_family_has_contract_cases():
    missing = sorted(set(MECHANISMS) - set(FACTORIES))
    assert not missing, f"mechanism families without contract cases in tests/mechanisms/cases/: {missing}"


@pytest.fixture(params=ALL, ids=[f"{fam}-{i}" for fam, i, _ in ALL])
def case(request) -> ContractCase:
    torch.manual_seed(1234)
    c = request.param[2]()
    c.mechanism.eval()
    return c


def test_abduct_then_predict_reconstructs(case: ContractCase):
    m = case.mechanism
    if isinstance(case.recon_tol, str):
        pytest.skip(f"{case.name}: {case.recon_tol}")
    with torch.no_grad():
        rec = m.predict(m.abduct(case.x, case.parents), case.parents)
    assert rec.shape == case.x.shape
    err = (rec - case.x).abs().max().item()
    tol = min(case.recon_tol, 1e-4) if m.exact_abduction else case.recon_tol
    assert err <= tol, f"{case.name}: reconstruction error {err:.3g} > {tol:.3g}"


def test_predict_is_deterministic_given_noise(case: ContractCase):
    m = case.mechanism
    with torch.no_grad():
        noise = m.abduct(case.x, case.parents)
        a = m.predict(noise, case.parents)
        b = m.predict(noise, case.parents)
    torch.testing.assert_close(a, b)


def test_sample_shapes(case: ContractCase):
    m = case.mechanism
    n = case.x.shape[0]
    with torch.no_grad():
        s = m.sample(case.parents, n=n)
    assert s.shape == case.x.shape
    assert torch.isfinite(s).all()
    if case.graph.kinds[case.node].name == "binary":
        assert set(s.unique().tolist()) <= {0.0, 1.0}
    if case.graph.kinds[case.node].name == "categorical":
        assert torch.all(s.sum(1) == 1)


def test_loss_is_finite_and_differentiable(case: ContractCase):
    m = case.mechanism
    m.train()
    terms = m.loss(case.x, case.parents)
    assert "loss" in terms and terms["loss"].ndim == 0
    assert all(torch.isfinite(v).all() for v in terms.values())
    params = [p for p in m.parameters() if p.requires_grad]
    if params:
        terms["loss"].backward()
        assert any(p.grad is not None and torch.isfinite(p.grad).all() for p in params)


def test_rebuild_from_config_gives_same_predictions(case: ContractCase):
    m = case.mechanism
    clone = type(m).from_graph(case.graph, case.node, **m.config)
    clone.load_state_dict(m.state_dict())
    clone.eval()
    with torch.no_grad():
        noise = m.abduct(case.x, case.parents)
        torch.testing.assert_close(clone.predict(noise, case.parents), m.predict(noise, case.parents))


def test_missing_parent_is_named(case: ContractCase):
    if not case.parents:
        pytest.skip("root node")
    first = next(iter(case.parents))
    partial = {k: v for k, v in case.parents.items() if k != first}
    with pytest.raises(KeyError, match=first):
        case.mechanism.abduct(case.x, partial)


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_a_string_or_bool_for_a_numeric_option_is_named(family: str):
    """`kl_weight=abc` failed as "could not convert string to float: 'abc'" (no option named), a quoted "30" or a
    `true` for a number was read silently by some families: every numeric option of every family is checked."""
    case = FACTORIES[family][0]()
    cls = MECHANISMS[family]
    options = [k for k, v in cls.option_defaults().items() if isinstance(v, int | float) and not isinstance(v, bool)]
    assert options, f"{family}: no numeric options found"
    for key in options:
        for bad in ("abc", "30", True):
            with pytest.raises(ValueError, match=rf"{family} '{case.node}': {key} must be a number, got {bad!r}"):
                cls.from_graph(case.graph, case.node, **{key: bad})
