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
