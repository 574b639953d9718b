"""The shared plain training loop (`imcf.training.fit.fit_mechanism`) against a closed form."""

import math

import pytest
import torch

from imcf.graph import CausalGraph
from imcf.mechanisms.gan import ConditionalGAN
from imcf.mechanisms.linear_gaussian import LinearGaussian
from imcf.training.fit import fit_mechanism

GRAPH = CausalGraph.from_dict({"a": "continuous", "y": {"kind": "continuous", "parents": ["a"]}})


def test_fit_recovers_a_linear_gaussian_mechanism_and_is_seeded():
    """y = 2 a + 1 + 0.5 e: maximum likelihood gives weight 2, bias 1, sigma 0.5 (to sampling error)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 1, generator=g)
    y = 2 * a + 1 + 0.5 * torch.randn(4000, 1, generator=g)
    runs = []
    for _ in range(2):
        mech = LinearGaussian.from_graph(GRAPH, "y")
        out = fit_mechanism(mech, y, {"a": a}, steps=600, batch_size=256, lr=5e-2, cosine=True)
        runs.append(mech)
    assert not mech.training and out["skipped_steps"] == 0 and math.isfinite(out["loss"])
    assert float(mech.weight.flatten()[0]) == pytest.approx(2.0, abs=0.03)
    assert float(mech.bias) == pytest.approx(1.0, abs=0.03)
    assert float(mech.log_sigma.exp()) == pytest.approx(0.5, abs=0.02)
    for p, q in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(p, q)  # same seed, same minibatches, same result


def test_fit_refuses_families_that_train_themselves():
    graph = CausalGraph.from_dict({"img": {"kind": "image", "shape": [1, 32, 32]}})
    gan = ConditionalGAN.from_graph(graph, "img", widths=[8, 16], disc_widths=[8, 16])
    with pytest.raises(ValueError, match="several optimisers"):
        fit_mechanism(gan, torch.zeros(4, 1, 32, 32), {}, steps=1)


def _trained(steps: int, hint: float | None = None, **kwargs) -> LinearGaussian:
    """y on a, `steps` Adam steps from a seeded start; `hint` is the mechanism's own `ema_decay`."""
    torch.manual_seed(0)
    mech = LinearGaussian.from_graph(GRAPH, "y")
    mech.ema_decay = hint
    g = torch.Generator().manual_seed(1)
    a = torch.randn(512, 1, generator=g)
    fit_mechanism(mech, 2 * a + 1 + 0.5 * torch.randn(512, 1, generator=g), {"a": a}, steps, 32, 5e-2, **kwargs)
    return mech


def test_fit_averages_the_weights_as_the_mechanism_asks_with_warm_up():
    """The averaged parameters are the EMA (warm-up min(d, (1 + k) / (10 + k))) of the raw trajectory, which a run
    of k steps without averaging reproduces (same seed, same minibatches)."""
    decay, steps = 0.6, 6
    raw = [[p.detach().clone() for p in _trained(k, ema_decay=0).parameters()] for k in range(steps + 1)]
    want = raw[0]
    for k in range(1, steps + 1):
        d = min(decay, (1 + k) / (10 + k))
        want = [w + (1 - d) * (r - w) for w, r in zip(want, raw[k])]
    got = list(_trained(steps, ema_decay=decay).parameters())
    for g, w, r in zip(got, want, raw[steps]):
        torch.testing.assert_close(g.detach(), w)
        assert not torch.allclose(g, r)  # averaged, not the last raw weights
    # ema_decay None: the mechanism's own hint (the DDIM preset's 0.999), as a train.py unit does
    for p, w in zip(_trained(steps, hint=decay).parameters(), want):
        torch.testing.assert_close(p.detach(), w)
    with pytest.raises(ValueError, match="'y': ema_decay must be in"):
        _trained(1, ema_decay=1.0)
