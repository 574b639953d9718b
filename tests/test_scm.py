"""SCM engine: closed-form linear-Gaussian counterfactuals, invariants, errors, save/load."""

import numpy as np
import pytest
import torch

from imcf.data.linear import DEFAULT_GRAPH, DEFAULT_MECHANISMS, true_linear_scm
from imcf.graph import CausalGraph
from imcf.io import CheckpointError
from imcf.mechanisms.base import Mechanism
from imcf.mechanisms.linear_gaussian import LinearGaussian
from imcf.scm import SCM

# x1 -> x2 -> x4, x1 -> x3 -> x4 (fork at x1, chains, collider at x4); coefficients from DEFAULT_MECHANISMS
W21, W31, W42, W43 = 0.8, -1.2, 0.6, 0.4


@pytest.fixture
def scm() -> SCM:
    return true_linear_scm(DEFAULT_GRAPH, DEFAULT_MECHANISMS)


@pytest.fixture
def factual(scm) -> dict:
    torch.manual_seed(0)
    return scm.sample(256)


def test_single_intervention_matches_closed_form(scm, factual):
    v = torch.linspace(-3, 3, 256).unsqueeze(1)
    cf = scm.counterfactual(factual, {"x1": v})
    d = v - factual["x1"]
    torch.testing.assert_close(cf["x1"], v)
    torch.testing.assert_close(cf["x2"], factual["x2"] + W21 * d, atol=1e-5, rtol=0)
    torch.testing.assert_close(cf["x3"], factual["x3"] + W31 * d, atol=1e-5, rtol=0)
    torch.testing.assert_close(cf["x4"], factual["x4"] + (W42 * W21 + W43 * W31) * d, atol=1e-5, rtol=0)


def test_mid_graph_intervention_leaves_non_descendants_bit_identical(scm, factual):
    cf = scm.counterfactual(factual, {"x2": 2.5})
    for node in ("x1", "x3"):
        assert torch.equal(cf[node], factual[node])
    assert torch.all(cf["x2"] == 2.5)
    torch.testing.assert_close(cf["x4"], factual["x4"] + W42 * (2.5 - factual["x2"]), atol=1e-5, rtol=0)


def test_joint_intervention_matches_closed_form(scm, factual):
    a, b = torch.randn(256, 1), torch.randn(256)  # per-sample values, (B, 1) and (B,)
    cf = scm.counterfactual(factual, {"x2": a, "x3": b})
    expected = factual["x4"] + W42 * (a - factual["x2"]) + W43 * (b.unsqueeze(1) - factual["x3"])
    torch.testing.assert_close(cf["x4"], expected, atol=1e-5, rtol=0)
    assert torch.equal(cf["x1"], factual["x1"])


def test_null_intervention_returns_the_factual(scm, factual):
    for node in scm.graph.nodes:
        cf = scm.counterfactual(factual, {node: factual[node]})
        for v in scm.graph.nodes:
            torch.testing.assert_close(cf[v], factual[v], atol=1e-5, rtol=0)
    cf = scm.counterfactual(factual, {})
    assert all(torch.equal(cf[v], factual[v]) for v in scm.graph.nodes)


def test_sample_covariance_matches_analytic(scm):
    nodes = ["x1", "x2", "x3", "x4"]
    b = np.zeros((4, 4))
    b[1, 0], b[2, 0], b[3, 1], b[3, 2] = W21, W31, W42, W43
    s = np.diag([DEFAULT_MECHANISMS[n]["sigma"] for n in nodes])
    a = np.linalg.inv(np.eye(4) - b)
    cov = a @ s @ s.T @ a.T
    mean = a @ np.array([DEFAULT_MECHANISMS[n]["bias"] for n in nodes])
    torch.manual_seed(1)
    n = 200_000
    x = scm.sample(n)
    data = torch.cat([x[v] for v in nodes], 1).double().numpy()
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(data.mean(0) - mean) < 5 * se_mean)
    emp = np.cov(data, rowvar=False)
    se_cov = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)
    assert np.all(np.abs(emp - cov) < 5 * se_cov), (emp, cov)


def test_intervene_cuts_incoming_edges(scm):
    torch.manual_seed(2)
    x = scm.intervene({"x2": 1.0}, 50_000)
    assert torch.all(x["x2"] == 1.0)
    # x4 | do(x2=1) = 0.6 + 0.4 * x3, with x3 independent of x2 now
    torch.testing.assert_close(x["x4"].mean(), torch.tensor(W42 + W43 * (W31 * 1.0 + 0.3)), atol=0.02, rtol=0)


def test_categorical_parent_and_index_interventions():
    g = CausalGraph.from_dict(
        {
            "d": "categorical(3)",
            "y": {"kind": "continuous", "parents": ["d"]},
            "z": {"kind": "continuous", "parents": ["y"]},
        }
    )
    mechs = {
        "d": CategoricalRoot.from_graph(g, "d"),
        "y": LinearGaussian.from_graph(g, "y", weights={"d": [0.0, 1.0, 5.0]}, sigma=0.1),
        "z": LinearGaussian.from_graph(g, "z", weights={"y": 2.0}, sigma=0.1),
    }
    scm = SCM(g, mechs)
    fact = scm.sample(9)
    cf = scm.counterfactual(fact, {"d": 2})  # class index broadcast to all samples
    assert torch.all(cf["d"].argmax(1) == 2)
    shift = 5.0 - fact["d"] @ torch.tensor([0.0, 1.0, 5.0])
    torch.testing.assert_close(cf["y"], fact["y"] + shift.unsqueeze(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(cf["z"], fact["z"] + 2 * shift.unsqueeze(1), atol=1e-4, rtol=0)
    cf2 = scm.counterfactual(fact, {"d": torch.arange(9) % 3})  # per-sample class indices
    assert torch.equal(cf2["d"].argmax(1), torch.arange(9) % 3)
    with pytest.raises(ValueError, match=r"do\(d\): class indices must lie in \[0, 3\)"):
        scm.counterfactual(fact, {"d": 3})
    # a whole float is an index (do(d=2.0) from a config file or a float column); a fraction is not
    assert torch.equal(scm.counterfactual(fact, {"d": 2.0})["d"], cf["d"])
    with pytest.raises(ValueError, match=r"do\(d\): a categorical node takes a class index .* got 1.5"):
        scm.counterfactual(fact, {"d": 1.5})
    # (n, 1) class indices (a label column) are indices; soft, two-hot or empty rows are no class at all
    assert torch.equal(scm.counterfactual(fact, {"d": (torch.arange(9) % 3)[:, None]})["d"], cf2["d"])
    for rows, shown in ((torch.full((9, 3), 1 / 3), "0.3333, 0.3333, 0.3333"), (torch.zeros(9, 3), "0.0, 0.0, 0.0"),
                        (torch.tensor([[1.0, 1.0, 0.0]] * 9), "1.0, 1.0, 0.0")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"do\(d\): a categorical value is a class index or a one-hot row .*"
                                             rf"row 0 is \[{shown}\]"):  # fmt: skip
            scm.counterfactual(fact, {"d": rows})
    # the factual's class must be one as well: a soft row reached y's mechanism as a class that does not exist
    for rows, shown in ((torch.full((9, 3), 1 / 3), "0.3333, 0.3333, 0.3333"), (torch.zeros(9, 3), "0.0, 0.0, 0.0")):
        with pytest.raises(ValueError, match=rf"factual\['d'\]: a categorical\(3\) node takes one-hot rows .*"
                                             rf"row 0 is \[{shown}\]"):  # fmt: skip
            scm.counterfactual({**fact, "d": rows}, {"d": 2})


def test_do_values_outside_a_nodes_support_are_refused():
    """do(thickness=-1) on a positive support, or an intensity of 1000 on [64, 255], has no world to answer in:
    refused naming the node and the support (before, the image mechanism was asked to draw it)."""
    from imcf.mechanisms.flow import FlowMechanism

    g = CausalGraph.from_dict({"t": "continuous", "i": {"kind": "continuous", "parents": ["t"]}})
    mechs = {
        "t": FlowMechanism.from_graph(g, "t", transform="affine", support="positive", lower=0.5),
        "i": FlowMechanism.from_graph(g, "i", transform="affine", support="bounded", lower=64.0, upper=255.0),
    }
    scm = SCM(g, mechs)
    fact = {"t": torch.full((4, 1), 2.0), "i": torch.full((4, 1), 100.0)}
    for do, message in (
        ({"t": -1.0}, r"do\(t\): 4 value\(s\) outside the node's support \[0.5, inf\] \(e.g. row 0: -1\)"),
        ({"i": torch.tensor([70.0, 80.0, 1000.0, 90.0])}, r"do\(i\): 1 value\(s\) outside .* \[64, 255\]"),
    ):
        with pytest.raises(ValueError, match=message):
            scm.counterfactual(fact, do)
        with pytest.raises(ValueError, match=message):
            scm.intervene(do, 4)
    assert torch.equal(scm.counterfactual(fact, {"i": 255.0})["i"], torch.full((4, 1), 255.0))  # bounds included
    assert scm.counterfactual(fact, {"t": 0.5})["t"].eq(0.5).all()
    # a factual no world can hold: its abducted noise would be meaningless (intensity 1e6 gave an inf image)
    for node, value, message in (
        ("t", -1.0, r"factual\['t'\]: 1 value\(s\) outside the node's support \[0.5, inf\] \(e.g. row 2: -1\)"),
        ("i", 1e6, r"factual\['i'\]: 1 value\(s\) outside the node's support \[64, 255\] \(e.g. row 2: 1e\+06\)"),
        ("i", 63.9, r"factual\['i'\]: .* \[64, 255\]"),
    ):
        bad = {k: v.clone() for k, v in fact.items()}
        bad[node][2] = value
        with pytest.raises(ValueError, match=message):
            scm.counterfactual(bad, {"t": 1.0})
        with pytest.raises(ValueError, match=message):
            scm.abduct(bad)
    edge = {"t": torch.full((4, 1), 0.5), "i": torch.tensor([[64.0], [255.0], [100.0], [64.0]])}
    assert torch.equal(scm.counterfactual(edge, {})["i"], edge["i"])  # the bounds are inside


class CategoricalRoot(Mechanism):
    """Uniform categorical root whose noise is the category itself (enough for this test)."""

    exact_abduction = True

    def abduct(self, x, parents):
        return x

    def predict(self, noise, parents):
        return noise

    def sample_noise(self, n):
        return torch.nn.functional.one_hot(torch.randint(0, self.kind.num_classes, (n,)), self.kind.num_classes).float()

    def loss(self, x, parents):
        return {"loss": torch.zeros(())}


def test_errors_name_what_is_wrong(scm, factual):
    with pytest.raises(KeyError, match=r"unknown node\(s\) \['colour'\]"):
        scm.counterfactual(factual, {"colour": 1.0})
    partial = {k: v for k, v in factual.items() if k != "x3"}
    with pytest.raises(KeyError, match=r"needs node\(s\) \['x3'\]"):
        scm.counterfactual(partial, {"x2": 0.0})
    with pytest.raises(ValueError, match=r"do\(x2\): value of shape \(5, 2\)"):
        scm.counterfactual(factual, {"x2": torch.zeros(5, 2)})
    mechs = dict(scm.mechanisms.items())
    del mechs["x4"]
    with pytest.raises(KeyError, match=r"no mechanism for node\(s\) \['x4'\]"):
        SCM(scm.graph, mechs)


def test_counterfactual_needs_only_what_the_query_uses(scm, factual):
    # do(x4) needs every other node (copied) but not x4's factual value
    partial = {k: v for k, v in factual.items() if k != "x4"}
    cf = scm.counterfactual(partial, {"x4": 0.0})
    assert torch.all(cf["x4"] == 0)


def test_save_load_round_trip(tmp_path, factual):
    g = CausalGraph.from_dict(DEFAULT_GRAPH)
    torch.manual_seed(3)
    mechs = {n: LinearGaussian.from_graph(g, n) for n in g.nodes}
    for m in mechs.values():  # random learnable parameters, not the defaults
        torch.nn.init.normal_(m.weight)
        torch.nn.init.normal_(m.bias)
    scm = SCM(g, mechs)
    scm.save(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.yaml",
        "graph.yaml",
        "mechanisms.yaml",
        "x1.ckpt",
        "x2.ckpt",
        "x3.ckpt",
        "x4.ckpt",
    ]
    loaded = SCM.load(tmp_path / "run")
    do = {"x1": torch.randn(256, 1)}
    a, b = scm.counterfactual(factual, do), loaded.counterfactual(factual, do)
    for v in g.nodes:
        assert torch.equal(a[v], b[v])


def test_load_reports_missing_unit(tmp_path, scm):
    scm.save(tmp_path / "run")
    (tmp_path / "run" / "x3.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="unit 'x3'"):
        SCM.load(tmp_path / "run")


@pytest.mark.parametrize(
    "do, error, message",
    [
        ({"x1": float("nan")}, ValueError, r"do\(x1\): .*NaN"),
        ({"x1": torch.full((256, 1), float("inf"))}, ValueError, r"do\(x1\): .*inf"),
        ({"x2": [0.0, float("-inf")] * 128}, ValueError, r"do\(x2\): .*inf"),
        ({"x1": "1.0"}, TypeError, r"do\(x1\): '1.0' is not numeric"),
        ({"x1": None}, TypeError, r"do\(x1\): None is not numeric"),
    ],
)
def test_bad_do_values_name_the_node(scm, factual, do, error, message):
    with pytest.raises(error, match=message):
        scm.counterfactual(factual, do)
    with pytest.raises(error, match=message):
        scm.intervene(do, 256)


def _broken(factual, node, value):
    return {**factual, node: value}


@pytest.mark.parametrize(
    "change, error, message",
    [
        (
            lambda f: _broken(f, "x1", f["x1"].clone().index_fill_(0, torch.tensor([3]), float("nan"))),
            ValueError,
            r"factual\['x1'\]: 1 NaN/inf value",
        ),
        (lambda f: _broken(f, "x3", f["x3"].clone().fill_(float("inf"))), ValueError, r"factual\['x3'\]: 256 NaN/inf"),
        (lambda f: _broken(f, "x1", f["x1"][:, 0]), ValueError, r"factual\['x1'\]: shape \(256,\) .*\(B, 1\)"),
        (lambda f: _broken(f, "x3", f["x3"][:4]), ValueError, r"factual\['x3'\] has 4 rows, factual\['x1'\] has 256"),
        (lambda f: _broken(f, "x1", f["x1"].tolist()), TypeError, r"factual\['x1'\]: expected a tensor, got list"),
        (lambda f: _broken(f, "x1", f["x1"].long()), TypeError, r"factual\['x1'\]: dtype torch.int64 .*floating"),
        # numpy's default dtype: it reached a conv as "Input type (double) and bias type (float) should be the same"
        (lambda f: _broken(f, "x1", f["x1"].double()), TypeError, r"factual\['x1'\]: dtype torch.float64; .*float32"),
        (lambda f: {k: v[:0] for k, v in f.items()}, ValueError, r"factual: the batch has 0 rows"),
        (lambda f: f["x1"], TypeError, r"factual must map node -> tensor \(a batch dict\); got Tensor"),
    ],
)
def test_bad_factual_batches_name_the_node(scm, factual, change, error, message):
    with pytest.raises(error, match=message):
        scm.counterfactual(change(factual), {"x2": 0.0})


def test_a_do_that_is_not_a_mapping_is_named(scm, factual):
    with pytest.raises(TypeError, match=r"do must map node -> value, e.g. \{'x': 1.0\}; got list"):
        scm.counterfactual(factual, ["x2"])


def test_images_outside_minus_one_to_one_are_refused():
    """An 8-bit batch (0..255) given as the factual image was answered as garbage; a counterfactual fed back
    (composition cycles) stays accepted."""
    from imcf.mechanisms.vae import ConditionalVAE

    g = CausalGraph.from_dict({"t": "continuous", "image": {"kind": "image", "shape": [1, 8, 8], "parents": ["t"]}})
    mechs = {"t": LinearGaussian.from_graph(g, "t"), "image": ConditionalVAE.from_graph(g, "image", widths=[4, 4])}
    scm = SCM(g, mechs)
    fact = {"t": torch.zeros(3, 1), "image": torch.rand(3, 1, 8, 8) * 255}
    with pytest.raises(ValueError, match=r"factual\['image'\]: values in \[.*\]; image nodes take values in \[-1, 1\]"):
        scm.counterfactual(fact, {"t": 1.0})
    fact["image"] = fact["image"] / 127.5 - 1
    cf = scm.counterfactual(fact, {"t": 1.0})
    assert cf["image"].abs().max() <= 1 and scm.counterfactual(cf, {"t": 0.0})["image"].shape == (3, 1, 8, 8)


def test_nan_in_a_node_the_query_does_not_read_is_not_an_error(scm, factual):
    broken = _broken(factual, "x4", torch.full_like(factual["x4"], float("nan")))
    cf = scm.counterfactual(broken, {"x4": 0.0})  # do(x4) never reads x4's factual value
    assert torch.all(cf["x4"] == 0)


def test_sample_size_must_be_a_positive_integer(scm, factual):
    for n in (0, 2.5, "8"):
        with pytest.raises(ValueError, match="n is the number of samples"):
            scm.intervene({}, n)
    with pytest.raises(ValueError, match=r"factual\['x2'\]: 256 NaN/inf"):
        scm.abduct(_broken(factual, "x2", factual["x2"] + float("nan")))


# ----- checkpoints that do not belong to the graph, and checkpoints that cannot be read

X2_FROM_X3 = {  # x1 -> x3 -> x2 -> x4, x3 -> x4: x2 has one parent, as in DEFAULT_GRAPH, but another one
    "name": "other",
    "nodes": {
        "x1": {"kind": "continuous"},
        "x3": {"kind": "continuous", "parents": ["x1"]},
        "x2": {"kind": "continuous", "parents": ["x3"]},
        "x4": {"kind": "continuous", "parents": ["x2", "x3"]},
    },
}


def _linear_run(directory, graph=DEFAULT_GRAPH, **config):
    g = CausalGraph.from_dict(graph)
    scm = SCM.build(g, {n: {"family": "linear_gaussian", "config": config.get(n, {})} for n in g.nodes})
    return scm.save(directory)


def test_load_refuses_a_checkpoint_of_another_graph_with_the_same_shapes(tmp_path):
    run, other = _linear_run(tmp_path / "run"), _linear_run(tmp_path / "other", X2_FROM_X3)
    (run / "x2.ckpt").write_bytes((other / "x2.ckpt").read_bytes())
    with pytest.raises(CheckpointError, match=r"x2\.ckpt.*node 'x2': parents \['x3'\] in the checkpoint, \['x1'\] in "):
        SCM.load(run)


def test_load_refuses_other_shapes_without_torchs_size_mismatch(tmp_path):
    run = _linear_run(tmp_path / "run")
    other = _linear_run(tmp_path / "other", {"nodes": {**DEFAULT_GRAPH["nodes"], "x4": {"kind": "continuous"}}})
    (run / "x4.ckpt").write_bytes((other / "x4.ckpt").read_bytes())
    with pytest.raises(CheckpointError, match=r"x4\.ckpt.*node 'x4': parents \[\] in the checkpoint") as err:
        SCM.load(run)
    assert "size mismatch" not in str(err.value)
    # a checkpoint without meta (an older format): the weights' shapes are compared and named
    ckpt = torch.load(other / "x4.ckpt", weights_only=True)
    del ckpt["meta"]
    torch.save(ckpt, run / "x4.ckpt")
    with pytest.raises(CheckpointError, match=r"x4\.ckpt.*node 'x4': .*weight: shape \(0,\) in the checkpoint, \(2,\)"):
        SCM.load(run)


def test_load_refuses_another_family_or_constructor_arguments(tmp_path):
    run = _linear_run(tmp_path / "run")
    other = _linear_run(tmp_path / "other", x3={"sigma": 2.0})
    (run / "x3.ckpt").write_bytes((other / "x3.ckpt").read_bytes())
    with pytest.raises(CheckpointError, match=r"x3\.ckpt.*node 'x3': config \{'sigma': 2\.0\} in the checkpoint, \{\}"):
        SCM.load(run)
    ckpt = torch.load(other / "x3.ckpt", weights_only=True)
    ckpt["meta"]["x3"].update(family="flow", config={})
    torch.save(ckpt, run / "x3.ckpt")
    with pytest.raises(CheckpointError, match=r"node 'x3': family 'flow' in the checkpoint, 'linear_gaussian'"):
        SCM.load(run)


def test_load_refuses_a_checkpoint_of_another_unit(tmp_path):
    run = _linear_run(tmp_path / "run")
    (run / "x2.ckpt").write_bytes((run / "x3.ckpt").read_bytes())
    with pytest.raises(CheckpointError, match=r"x2\.ckpt holds unit \['x3'\], expected \['x2'\]"):
        SCM.load(run)


def test_truncated_checkpoint_names_the_file_and_the_way_back(tmp_path):
    run = _linear_run(tmp_path / "run")
    data = (run / "x3.ckpt").read_bytes()
    (run / "x3.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*x3\.ckpt.*retrain unit 'x3'.*units=\[x3\]"):
        SCM.load(run)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*x3\.ckpt"):
        SCM.load(_linear_run(tmp_path / "fresh")).load_unit(run / "x3.ckpt")


def test_a_query_that_reads_no_factual_value_checks_its_do_values(scm):
    with pytest.raises(TypeError, match=r"do\(x1\): '1.0' is not numeric"):
        scm.counterfactual({}, {n: "1.0" for n in scm.graph.nodes})
    cf = scm.counterfactual({}, {n: torch.zeros(3, 1) for n in scm.graph.nodes})
    assert cf["x4"].shape == (3, 1)


def test_inference_options_rebuild_the_mechanism_with_its_weights():
    from imcf.mechanisms.discrete import DiscreteMechanism
    from imcf.mechanisms.vae import ConditionalVAE as VAE

    g = CausalGraph.from_dict({"d": "binary", "x": {"kind": "image", "shape": [1, 8, 8], "parents": ["d"]}})
    torch.manual_seed(0)
    vae = VAE.from_graph(g, "x", latent_dim=4, widths=[4, 8], abduction={"withheld_latent_scale": 0.5})
    scm = SCM(g, {"d": DiscreteMechanism.from_graph(g, "d"), "x": vae}).eval()
    factual = {"d": torch.tensor([[0.0], [1.0]]), "x": torch.rand(2, 1, 8, 8) * 2 - 1}
    flipped = {"d": 1 - factual["d"]}
    before = scm.counterfactual(factual, flipped)["x"]
    scm.set_inference_options("x", {"abduction": {"withheld_latent_scale": 1.0}})
    new = scm.mechanisms["x"]
    assert new is not vae and not new.training
    assert new.config["abduction"] == {"withheld_latent_scale": 1.0} and new.withheld_latent_scale == 1.0
    for k, v in vae.state_dict().items():
        torch.testing.assert_close(new.state_dict()[k], v, rtol=0, atol=0, equal_nan=True, msg=k)  # weights kept
    assert not torch.allclose(scm.counterfactual(factual, flipped)["x"], before)  # and the option acts
    scm.set_inference_options("x", {"abduction": {"withheld_latent_scale": 0.5}})
    torch.testing.assert_close(scm.counterfactual(factual, flipped)["x"], before)
    scm.set_inference_options("x", {"abduction": {"fit": {"steps": 3, "rate": 0.02}}})
    scm.set_inference_options("x", {"abduction": {"fit": {"steps": 5}}})  # nested: the rate set before stays
    assert scm.mechanisms["x"].config["abduction"] == {"withheld_latent_scale": 0.5, "fit": {"steps": 5, "rate": 0.02}}
    assert scm.mechanisms["x"].fit == {"steps": 5, "rate": 0.02, "prior": 1.0, "withheld": False}
    with pytest.raises(KeyError, match=r"\['latent_dim'\].*'vae'.*abduction"):
        scm.set_inference_options("x", {"latent_dim": 8})  # would change what the weights mean
    with pytest.raises(KeyError, match="'y': no such node"):
        scm.set_inference_options("y", {"abduction": {}})
    with pytest.raises(KeyError, match="'d'.*none"):
        scm.set_inference_options("d", {"abduction": {}})
