import pytest
import torch

from imcf.data.linear import DEFAULT_GRAPH, DEFAULT_MECHANISMS, true_linear_scm
from imcf.evaluators.features import LPIPSDistance, lpips_weights_available
from imcf.graph import NodeKind
from imcf.metrics.composition import feature_l1, image_l1, node_distance, null_intervention, repeat
from imcf.metrics.reversibility import round_trips, undo


def test_identical_images_give_zero_and_a_known_shift_its_value():
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    assert torch.all(image_l1(x, x) == 0)
    shifted = x + 2 * 3 / 255  # 3 grey levels
    torch.testing.assert_close(image_l1(shifted, x), torch.full((4,), 3.0), atol=1e-4, rtol=0)


def test_uint8_images_do_not_wrap_around():
    a = torch.zeros(1, 1, 2, 2, dtype=torch.uint8)
    b = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    assert image_l1(a, b).item() == 255.0  # uint8 subtraction would give 1


def test_feature_and_node_distances():
    f = torch.randn(3, 5)
    assert torch.all(feature_l1(f, f) == 0)
    assert feature_l1(f + 0.5, f).tolist() == pytest.approx([0.5] * 3)
    cat = NodeKind("categorical", num_classes=3)
    assert node_distance(cat, torch.eye(3), torch.eye(3)[[0, 2, 2]]).tolist() == [0.0, 1.0, 0.0]


def test_null_intervention_sets_roots_and_repeat_records_cycles():
    scm = true_linear_scm(DEFAULT_GRAPH, DEFAULT_MECHANISMS)
    factual = scm.sample(16)
    assert set(null_intervention(scm.graph, factual)) == {"x1"}
    calls = []

    def counterfactual(x, do):
        calls.append(do)
        return scm.counterfactual(x, do)

    outs = repeat(counterfactual, factual, lambda x: null_intervention(scm.graph, x), [1, 10])
    assert sorted(outs) == [1, 10] and len(calls) == 10
    for v in scm.graph.nodes:  # exact mechanisms: the null intervention is the identity
        torch.testing.assert_close(outs[10][v], factual[v], atol=1e-5, rtol=0)


def test_round_trip_of_an_exact_scm_returns_the_factual():
    scm = true_linear_scm(DEFAULT_GRAPH, DEFAULT_MECHANISMS)
    factual = scm.sample(16)
    do = {"x2": torch.full((16, 1), 3.0)}
    assert torch.equal(undo(do, factual)["x2"], factual["x2"])
    outs = round_trips(scm.counterfactual, factual, do, [1, 10])
    for v in scm.graph.nodes:
        torch.testing.assert_close(outs[10][v], factual[v], atol=1e-5, rtol=0)
    # a half trip is not the factual: x4 moved
    half = scm.counterfactual(factual, do)
    assert (half["x4"] - factual["x4"]).abs().mean() > 0.1


def test_lpips_without_local_weights_says_so():
    if lpips_weights_available():
        pytest.skip("LPIPS weights are present locally")
    with pytest.raises(FileNotFoundError, match="not there and nothing is downloaded"):
        LPIPSDistance()
