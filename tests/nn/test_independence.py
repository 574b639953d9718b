"""The normalised HSIC that keeps parent information out of abducted latents."""

from __future__ import annotations

import pytest
import torch

from imcf.nn.independence import dependence, gaussian_gram, normalised_hsic


def test_independent_samples_score_near_zero_and_functions_near_one() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=gen)
    noise = torch.randn(256, 1, generator=gen)
    k = gaussian_gram(x)
    assert float(normalised_hsic(k, gaussian_gram(noise))) < 0.03
    assert float(normalised_hsic(k, k)) == pytest.approx(1.0, abs=1e-5)
    # y = x0^2 is uncorrelated with x0 but fully dependent on it: HSIC sees it
    y = x[:, :1] ** 2
    assert abs(float(torch.corrcoef(torch.cat([x[:, :1], y], 1).T)[0, 1])) < 0.2
    assert float(normalised_hsic(gaussian_gram(x[:, :1]), gaussian_gram(y))) > 0.4


def test_one_hot_parent_clusters_are_detected() -> None:
    gen = torch.Generator().manual_seed(1)
    label = torch.randint(10, (128,), generator=gen)
    onehot = torch.nn.functional.one_hot(label, 10).float()
    centres = torch.randn(10, 8, generator=gen) * 3
    clustered = centres[label] + torch.randn(128, 8, generator=gen)
    unrelated = torch.randn(128, 8, generator=gen)
    assert dependence(clustered, {"digit": onehot})["digit"] > 5 * dependence(unrelated, {"digit": onehot})["digit"]


def test_minimising_dependence_removes_the_parent_from_a_code() -> None:
    """z = [u, s * p]: descending the penalty in s drives the parent's share of the code towards zero."""
    gen = torch.Generator().manual_seed(2)
    p, u = torch.randn(128, 1, generator=gen), torch.randn(128, 2, generator=gen)
    s = torch.tensor(2.0, requires_grad=True)
    opt = torch.optim.SGD([s], lr=0.5)
    start = None
    for _ in range(200):
        d = dependence([u, s * p], {"p": p})["p"]
        start = float(d.detach()) if start is None else start
        opt.zero_grad()
        d.backward()
        opt.step()
    assert start > 0.2
    assert abs(float(s)) < 0.3
    assert float(dependence([u, s * p], {"p": p})["p"]) < 0.5 * start


def test_small_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        dependence(torch.zeros(3, 2), {"p": torch.zeros(3, 1)})
