"""The normalised HSIC and the adversary that keep parent information out of abducted latents."""

from __future__ import annotations

import pytest
import torch

from imcf.graph import NodeKind
from imcf.nn.independence import ParentAdversary, dependence, gaussian_gram, normalised_hsic


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


def _probe_accuracy(code: torch.Tensor, label: torch.Tensor, classes: int) -> float:
    """A fresh logistic-regression reader, trained on half the rows and scored on the other half."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(code.shape[1], classes)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    half = len(code) // 2
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(code[:half]), label[:half]).backward()
        opt.step()
    return float((probe(code[half:]).argmax(1) == label[half:]).float().mean())


@pytest.mark.parametrize(("weight", "readable"), [(0.0, True), (1.0, False)])
def test_the_adversary_removes_a_parent_that_the_objective_would_keep(weight: float, readable: bool) -> None:
    """x = [u, class centre]: an encoder to 6 dims reconstructs u (4 dims) and has room to keep the class. Without
    the adversary it does (a fresh probe reads it); with it, the code keeps u and a fresh probe reads chance."""
    gen = torch.Generator().manual_seed(4)
    label = torch.randint(3, (512,), generator=gen)
    u = torch.randn(512, 4, generator=gen)
    x = torch.cat([u, torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])[label]], 1)
    parents = {"c": torch.nn.functional.one_hot(label, 3).float()}
    torch.manual_seed(5)
    encoder, decoder = torch.nn.Linear(6, 6), torch.nn.Linear(6, 4)
    adversary = ParentAdversary(6, {"c": NodeKind.parse("categorical(3)")}, hidden=32)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters(), *adversary.parameters()], lr=0.01)
    for _ in range(1500):
        code = encoder(x)
        loss = ((decoder(code) - u) ** 2).mean() + adversary(code, parents, weight)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    code = encoder(x).detach()
    assert float(((decoder(code) - u) ** 2).mean()) < 0.05  # u is kept either way
    accuracy = _probe_accuracy(code, label, 3)
    assert accuracy > 0.9 if readable else accuracy < 0.6, accuracy  # chance: 0.33


def test_the_adversary_reads_binary_and_continuous_parents() -> None:
    adversary = ParentAdversary(3, {"b": NodeKind.parse("binary"), "v": NodeKind.parse("continuous")}, hidden=8)
    code = torch.randn(32, 3, requires_grad=True)
    term, losses = adversary(code, {"b": torch.randint(2, (32, 1)).float(), "v": 100 + 5 * torch.randn(32, 1)}, 1.0)
    assert set(losses) == {"b", "v"} and all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert float(term) == 0.0  # the value is 0; the gradients are the reader's and the confusion's
    term.backward()
    assert code.grad.abs().sum() > 0 and adversary.net[0].weight.grad.abs().sum() > 0
    assert float(losses["v"]) < 10  # the value is standardised in the batch: its scale does not matter
