"""The oracle test on a small embedded Morpho-MNIST (slow: generating the digits takes a minute or two on CPU):
the true SCM scores near-perfect effectiveness and ground truth, a model returning the factual image scores
poorly on both but perfectly on composition."""

import json
from pathlib import Path

import pytest

from imcf.data.datamodule import build_dataset
from imcf.evaluation import evaluate_scm
from imcf.graph import CausalGraph
from tests.oracle import identity_scm, oracle_scm

GRAPH = Path(__file__).resolve().parents[1] / "configs" / "graph" / "morphomnist.yaml"  # the shipped graph
OPTIONS = {"num_samples": 400, "workers": 1}


@pytest.mark.slow
def test_oracle_and_identity_on_morphomnist(tmp_path):
    root = str(tmp_path / "data")
    graph = CausalGraph.from_yaml(GRAPH)
    test = build_dataset("morphomnist", root, "test", **OPTIONS)
    cfg = {
        "num_samples": 24,
        "batch_size": 24,
        "cycles": [1, 2],
        "progress": False,
        "accelerator": "cpu",
        "compute": ["effectiveness", "measured", "composition", "truth", "realism"],
        "interventions": {"nodes": ["thickness", "intensity"]},
        "predictors": {"max_epochs": 10},
    }
    out = {}
    for name, scm in (("oracle", oracle_scm(graph, test)), ("identity", identity_scm(graph))):
        report = evaluate_scm(scm, "morphomnist", root, OPTIONS, cfg, tmp_path / name, run_dir=name)
        out[name] = json.loads((Path(report) / "metrics.json").read_text())["metrics"]
    o, i = out["oracle"], out["identity"]
    # predictor-free effectiveness: morphometrics of the counterfactual vs the intended value
    assert o["measured/do(thickness)/thickness:mae"]["mean"] < 0.2 < i["measured/do(thickness)/thickness:mae"]["mean"]
    assert o["measured/do(intensity)/intensity:mae"]["mean"] < 3 < i["measured/do(intensity)/intensity:mae"]["mean"]
    # the predictors (trained on ~320 digits) still rank them
    assert (
        o["effectiveness/do(thickness)/thickness:mae"]["mean"] < i["effectiveness/do(thickness)/thickness:mae"]["mean"]
    )
    assert (
        o["effectiveness/do(intensity)/intensity:mae"]["mean"] < i["effectiveness/do(intensity)/intensity:mae"]["mean"]
    )
    # ground truth: exact for the oracle, not for the identity model
    for row in ("do(thickness)", "do(intensity)"):
        assert o[f"truth/{row}/image:mae"]["mean"] == 0
        assert i[f"truth/{row}/image:mae"]["mean"] > 2
    # composition: both give the factual back
    for m in (o, i):
        assert m["composition/null x2/image:l1"]["mean"] == 0
        # so their reconstructions are exactly as realistic as the real test images
        assert m["realism/null x1/image:fid"]["mean"] == m["realism/factual/image:fid"]["mean"]
