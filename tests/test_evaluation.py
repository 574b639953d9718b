"""The evaluator end to end on the linear-Gaussian dataset: the true SCM (oracle) against a model that returns
the factual unchanged, interventions as the protocol draws them, and clear errors."""

import json
from pathlib import Path

import pytest
import torch

from imcf.data.datamodule import build_dataset
from imcf.data.linear import DEFAULT_GRAPH
from imcf.evaluation import (
    EvaluationError,
    bin_edges,
    choose_metrics,
    draw_intervention,
    evaluate,
    evaluate_scm,
    groups,
)
from imcf.graph import CausalGraph, NodeKind
from tests.oracle import identity_scm, oracle_scm

OPTIONS = {"sizes": {"train": 200, "val": 50, "test": 200}, "seed": 3}
CFG = {"num_samples": 200, "batch_size": 64, "cycles": [1, 10], "progress": False, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    graph = CausalGraph.from_dict(DEFAULT_GRAPH)
    data = build_dataset("linear_gaussian", str(root / "data"), "test", **OPTIONS)
    out = {}
    for name, scm in (("oracle", oracle_scm(graph, data)), ("identity", identity_scm(graph))):
        report = evaluate_scm(scm, "linear_gaussian", str(root / "data"), OPTIONS, CFG, root / name, run_dir=name)
        out[name] = json.loads((Path(report) / "metrics.json").read_text())
        out[name]["dir"] = Path(report)
    return out


def test_the_evaluator_tells_the_oracle_from_the_identity_model(reports):
    oracle, identity = reports["oracle"]["metrics"], reports["identity"]["metrics"]
    # ground truth: the oracle is exact, the identity model misses the descendants (x4's two paths from x1
    # cancel in this SCM: 0.6 * 0.8 = 0.4 * 1.2, so do(x1) leaves x4 unchanged)
    for row, v in (("x1", "x2"), ("x1", "x3"), ("x2", "x4"), ("x3", "x4")):
        assert oracle[f"truth/do({row})/{v}:error"]["mean"] < 1e-5
        assert identity[f"truth/do({row})/{v}:error"]["mean"] > 0.3
    # composition: both give the factual back after 10 null interventions
    for m in (oracle, identity):
        for v in ("x1", "x2", "x3", "x4"):
            assert m[f"composition/null x10/{v}:error"]["mean"] < 1e-5
    # the intervened node itself always takes its value
    assert identity["truth/do(x2)/x2:error"]["mean"] == 0


def test_report_files_and_meta(reports):
    rep = reports["oracle"]
    d = rep["dir"]
    for f in ("metrics.json", "metrics.csv", "report.md", "tables/truth.md", "tables/composition.md"):
        assert (d / f).is_file(), f
    ident = rep["meta"]["identifiability"]  # imcf.identify's verdict of every query answered
    assert ident["do(x2)"]["status"] == "rests_on_mechanism" and "x4" in ident["do(x2)"]["assumptions"]
    assert rep["meta"]["metrics"] == ["composition", "reversibility", "truth"]
    assert any("effectiveness" in n and "no image node" in n for n in rep["meta"]["notes"])
    assert (d / "logs" / "evaluate" / "version_0" / "metrics.csv").is_file()
    table = (d / "tables" / "truth.md").read_text()
    assert "| do(x1) |" in table and "x4:error" in table


def test_binned_interventions_leave_the_factual_bin():
    gen = torch.Generator().manual_seed(0)
    pool = torch.linspace(-1, 1, 901)[:, None]
    edges = bin_edges(pool, 9)
    factual = pool[torch.randint(0, 901, (500,), generator=gen)]
    kind = NodeKind("continuous")
    value = draw_intervention(kind, factual, pool, gen, edges)
    assert torch.all(groups(kind, value, edges) != groups(kind, factual, edges))
    assert set(value.reshape(-1).tolist()) <= set(pool.reshape(-1).tolist())
    again = draw_intervention(kind, factual, pool, torch.Generator().manual_seed(0).manual_seed(0), edges)
    assert again.shape == value.shape
    cat = NodeKind("categorical", num_classes=10)
    digits = torch.eye(10)[torch.randint(0, 10, (300,), generator=gen)]
    other = draw_intervention(cat, digits, digits, gen)
    assert torch.all(other.argmax(1) != digits.argmax(1))
    assert len(set(other.argmax(1).tolist())) == 10


def test_unsupported_metric_is_a_clear_error():
    why = {m: "" for m in ("effectiveness", "measured", "composition", "reversibility", "realism", "minimality")}
    why["truth"] = "dataset 'celeba' has no ground-truth counterfactuals"
    with pytest.raises(EvaluationError, match="'truth' cannot be computed: dataset 'celeba' has no ground-truth"):
        choose_metrics(["composition", "truth"], why)
    assert choose_metrics(None, why)[0] == [
        "effectiveness",
        "measured",
        "composition",
        "reversibility",
        "realism",
        "minimality",
    ]
    with pytest.raises(EvaluationError, match="unknown metric"):
        choose_metrics(["sharpness"], why)
    with pytest.raises(EvaluationError, match=r"compute=\[\] asks for no metric; name some of \['effectiveness'"):
        choose_metrics([], why)


def test_image_metrics_on_an_attribute_graph_are_refused(tmp_path):
    graph = CausalGraph.from_dict(DEFAULT_GRAPH)
    with pytest.raises(EvaluationError, match="'realism' cannot be computed: graph 'linear4' has no image node"):
        evaluate_scm(
            identity_scm(graph),
            "linear_gaussian",
            str(tmp_path),
            OPTIONS,
            {**CFG, "compute": ["realism"]},
            tmp_path / "r",
        )


def test_intervening_on_a_node_the_graph_lacks_is_refused_before_the_data_are_built(tmp_path):
    """`interventions.nodes=[nosuch]` rendered a fresh data root's whole dataset before saying so."""
    graph = CausalGraph.from_dict(DEFAULT_GRAPH)
    with pytest.raises(EvaluationError, match=r"interventions.nodes is empty: name attributes of graph 'linear4'"):
        cfg = {**CFG, "interventions": {"nodes": []}}  # it meant every attribute, silently
        evaluate_scm(identity_scm(graph), "linear_gaussian", str(tmp_path / "data"), OPTIONS, cfg, tmp_path / "r")
    for nodes, bad in ((["x1", "nosuch"], "'nosuch'"), (["x4", "image"], "'image'")):
        with pytest.raises(EvaluationError, match=rf"interventions.nodes: \[{bad}\] are not attribute nodes of graph"):
            cfg = {**CFG, "interventions": {"nodes": nodes}}
            evaluate_scm(identity_scm(graph), "linear_gaussian", str(tmp_path / "data"), OPTIONS, cfg, tmp_path / "r")
    assert not (tmp_path / "data").exists()


def test_a_dataset_that_does_not_match_the_graph_is_named(tmp_path):
    """A graph node the dataset lacks, or one it gives in another shape, is named."""
    extra = {**DEFAULT_GRAPH, "nodes": {**DEFAULT_GRAPH["nodes"], "x5": {"kind": "continuous", "parents": ["x4"]}}}
    wide = {**DEFAULT_GRAPH, "nodes": {**DEFAULT_GRAPH["nodes"], "x4": {"kind": "categorical", "parents": ["x2"],
                                                                        "num_classes": 3}}}  # fmt: skip
    for spec, error in (
        (extra, r"dataset 'linear_gaussian' has no node 'x5' of graph 'linear4'; it has \['x1', 'x2', 'x3', 'x4'\]"),
        (wide, r"dataset 'linear_gaussian' node 'x4' has shape \(1,\), graph says \(3,\)"),
    ):
        graph = CausalGraph.from_dict(spec)
        with pytest.raises(EvaluationError, match=error):
            evaluate_scm(identity_scm(graph), "linear_gaussian", str(tmp_path / "data"), OPTIONS, CFG, tmp_path / "r")


def test_run_dir_without_checkpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    graph = CausalGraph.from_dict(DEFAULT_GRAPH)
    for f, content in (("graph.yaml", graph.to_dict()), ("mechanisms.yaml", {}), ("config.yaml", {})):
        (run / f).write_text(json.dumps(content))
    with pytest.raises(EvaluationError, match="has no checkpoints"):
        evaluate({"run_dir": str(run)})
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate({"run_dir": str(tmp_path / "nowhere")})
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(EvaluationError, match=r"run_dir=.*notes.txt is a file, not a run directory"):
        evaluate({"run_dir": str(tmp_path / "notes.txt")})


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from imcf.config import EvaluateConfig, validate

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        return validate(compose("evaluate", overrides=["run_dir=runs/x", *overrides]), EvaluateConfig)


def test_benchmark_protocol_is_the_default_and_matches_the_schema_defaults():
    from omegaconf import OmegaConf

    from imcf.config import EvaluateConfig, validate

    composed = _compose()
    defaults = validate({"run_dir": "runs/x"}, EvaluateConfig)
    assert composed.protocol == defaults.protocol == "benchmark"
    for key in ("interventions", "predictors", "realism", "minimality", "cycles"):
        assert OmegaConf.to_container(composed[key]) == OmegaConf.to_container(defaults[key]), key
    assert composed.interventions.kind == "binned" and composed.interventions.bins == 9


def test_inference_options_from_the_command_line():
    from omegaconf import OmegaConf

    cfg = _compose("+inference.image.guidance_scale=3", "+inference.image.abduction.withheld_latent_scale=1")
    assert cfg.inference.image.guidance_scale == 3 and cfg.inference.image.abduction.withheld_latent_scale == 1
    assert not _compose().inference
    per_parent = _compose("+inference.image.abduction.withheld_latent_scale={smiling:[0.5,1,1],eyeglasses:1}")
    scales = OmegaConf.to_container(per_parent.inference.image.abduction.withheld_latent_scale)
    assert scales == {"smiling": [0.5, 1, 1], "eyeglasses": 1}


def test_protocol_and_metric_selection_from_the_command_line():
    cfg = _compose("metrics/protocol=quick", "compute=[truth,composition]")
    assert cfg.protocol == "quick" and cfg.interventions.kind == "marginal" and cfg.num_samples == 512
    assert list(cfg.compute) == ["truth", "composition"]


def test_evaluating_leaves_the_model_as_it_was(tmp_path):
    """evaluate_scm answers under the evaluation's strictness and in eval mode, then restores the SCM's own, also
    when the evaluation is refused."""
    graph = CausalGraph.from_dict(DEFAULT_GRAPH)
    scm = oracle_scm(graph, build_dataset("linear_gaussian", str(tmp_path), "test", **OPTIONS))
    scm.train()
    assert scm.strict is False
    cfg = {**CFG, "num_samples": 50, "cycles": [1], "identify": {"strict": True}, "compute": ["composition"]}
    seen = {}
    original = scm.counterfactual

    def spy(*args, **kwargs):
        seen.update(strict=scm.strict, training=scm.training)
        return original(*args, **kwargs)

    scm.counterfactual = spy
    evaluate_scm(scm, "linear_gaussian", str(tmp_path), OPTIONS, cfg, tmp_path / "r")
    assert seen == {"strict": True, "training": False}  # as the evaluation asked
    assert scm.strict is False and scm.training  # and back afterwards
    with pytest.raises(EvaluationError, match="no image node"):
        evaluate_scm(scm, "linear_gaussian", str(tmp_path), OPTIONS, {**cfg, "compute": ["realism"]}, tmp_path / "s")
    assert scm.strict is False and scm.training
