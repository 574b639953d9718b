"""The attribute and discrete mechanism configs build a working SCM through the registry (the path train.py uses)."""

from pathlib import Path

import pytest
import torch
import yaml

from imcf.graph import CausalGraph
from imcf.scm import SCM

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "mechanism"
GRAPH = CausalGraph.from_dict(
    {
        "thickness": "continuous",
        "young": "binary",
        "digit": "categorical(3)",
        "intensity": {"kind": "continuous", "parents": ["thickness", "young", "digit"]},
        "beard": {"kind": "binary", "parents": ["young", "thickness"]},
        "style": {"kind": "categorical(4)", "parents": ["beard", "digit"]},
    }
)


@pytest.mark.parametrize("attribute", ["spline", "affine"])
@pytest.mark.parametrize("discrete", ["gumbel", "threshold"])
def test_configs_build_an_scm_that_samples_and_answers_counterfactuals(attribute, discrete, tmp_path):
    attr = yaml.safe_load((CONFIGS / "attribute" / f"{attribute}.yaml").read_text())
    disc = yaml.safe_load((CONFIGS / "discrete" / f"{discrete}.yaml").read_text())
    specs = {n: disc for n in ("young", "digit", "beard", "style")}
    specs["thickness"] = {"family": attr["family"], "config": {**attr["config"], "support": "positive", "lower": 0.5}}
    specs["intensity"] = {
        "family": attr["family"],
        "config": {**attr["config"], "support": "bounded", "lower": 64.0, "upper": 255.0},
    }
    torch.manual_seed(0)
    scm = SCM.build(GRAPH, specs).eval()
    factual = scm.sample(32)
    assert torch.all(factual["thickness"] > 0.5) and torch.all(
        (factual["intensity"] > 64) & (factual["intensity"] < 255)
    )
    same = scm.counterfactual(factual, {"thickness": factual["thickness"]})
    for n in GRAPH.nodes:
        torch.testing.assert_close(same[n], factual[n], atol=1e-4, rtol=0, msg=n)
    cf = scm.counterfactual(factual, {"young": 1 - factual["young"]})
    assert cf["beard"].shape == (32, 1) and torch.all(cf["style"].sum(1) == 1)
    loaded = SCM.load(scm.save(tmp_path / "run")).eval()
    assert loaded.mechanism_specs() == scm.mechanism_specs()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"sigma": 0.0}, r"linear_gaussian 'thickness': sigma must be > 0, got 0.0"),
        ({"learnable": "false"}, r"linear_gaussian 'thickness': learnable must be true or false, got 'false'"),
    ],
)
def test_linear_gaussian_options_are_checked(config, message):
    """A string "false" for `learnable` once read as true (the parameters trained when asked to stay fixed)."""
    with pytest.raises(ValueError, match=message):
        SCM.build(GRAPH, {"thickness": {"family": "linear_gaussian", "config": config}})
