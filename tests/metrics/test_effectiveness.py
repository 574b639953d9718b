import pytest
import torch
from sklearn.metrics import f1_score as sk_f1

from imcf.graph import NodeKind
from imcf.metrics.effectiveness import absolute_error, effectiveness, f1_score, labels


def test_absolute_error_known_values():
    pred = torch.tensor([[1.0], [2.0], [4.0]])
    target = torch.tensor([[1.5], [2.0], [1.0]])
    torch.testing.assert_close(absolute_error(pred, target), torch.tensor([0.5, 0.0, 3.0]))


@pytest.mark.parametrize("k", [2, 5])
def test_f1_matches_sklearn(k):
    gen = torch.Generator().manual_seed(k)
    y = torch.randint(0, k, (300,), generator=gen)
    p = torch.where(torch.rand(300, generator=gen) < 0.7, y, torch.randint(0, k, (300,), generator=gen))
    expected = sk_f1(y.numpy(), p.numpy(), average="binary" if k == 2 else "macro")
    assert f1_score(p, y, k) == pytest.approx(expected, abs=1e-12)


def test_f1_perfect_and_no_positive_hits():
    y = torch.tensor([0, 1, 1, 0])
    assert f1_score(y, y, 2) == 1.0
    assert f1_score(torch.zeros(4, dtype=torch.long), y, 2) == 0.0


def test_effectiveness_per_kind():
    cont = effectiveness(NodeKind("continuous"), torch.tensor([[2.0]]), torch.tensor([[1.0]]))
    assert cont["mae"].item() == 1.0
    binary = NodeKind("binary")
    acc = effectiveness(binary, torch.tensor([[0.9], [0.2]]), torch.tensor([[1.0], [1.0]]))["acc"]
    assert acc.tolist() == [1.0, 0.0]
    cat = NodeKind("categorical", num_classes=3)
    probs = torch.tensor([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    assert labels(cat, probs).tolist() == [1, 0]
    assert effectiveness(cat, probs, torch.eye(3)[[1, 2]])["acc"].tolist() == [1.0, 0.0]
