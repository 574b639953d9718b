"""Extending imcf as the README's "Extending imcf" section says: a new mechanism family and a new metric are each
one class registered by name, and `train.py` / `evaluate.py` pick them up with no other file touched."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import Tensor, nn

from imcf.cli import train_and_evaluate
from imcf.graph import NodeKind
from imcf.mechanisms.base import Mechanism
from imcf.metrics.base import CounterfactualStep, Metric
from imcf.registry import MECHANISMS, METRICS
from imcf.scm import SCM

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


class LaplaceAdditive(Mechanism):
    """x = w . parents + b + scale * u, u ~ Laplace(0, 1): an additive-noise family with heavier tails."""

    exact_abduction = True
    abduction_assumption = "additive Laplace noise, u = (x - f(pa)) / scale recovered exactly"

    def __init__(self, node: str, kind: NodeKind, parent_kinds: Mapping[str, NodeKind], scale: float = 1.0) -> None:
        super().__init__(node, kind, parent_kinds)
        self.weight = nn.Parameter(torch.zeros(self.parent_dim))
        self.bias = nn.Parameter(torch.zeros(()))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def _mean(self, parents: Mapping[str, Tensor], n: int) -> Tensor:
        return (self.parent_vector(parents, n) @ self.weight + self.bias).unsqueeze(1)

    def abduct(self, x: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        return (x - self._mean(parents, x.shape[0])) / self.log_scale.exp()

    def predict(self, noise: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        return self._mean(parents, noise.shape[0]) + self.log_scale.exp() * noise

    def sample_noise(self, n: int) -> Tensor:
        return torch.distributions.Laplace(0.0, 1.0).sample((n, 1)).to(self.device)

    def loss(self, x: Tensor, parents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        nll = (self.abduct(x, parents).abs() + self.log_scale + math.log(2)).mean()
        return {"loss": nll, "scale": self.log_scale.exp().detach()}


class Untouched(Metric):
    """Largest change of a node that is not a descendant of the intervened one (the SCM copies them: 0)."""

    def update(self, step: CounterfactualStep) -> int:
        graph = self.setting.graph
        keep = [v for v in graph.nodes if v != step.target and v not in graph.descendants(step.target)]
        for v in keep:
            change = (step.cf[v] - step.factual[v]).abs().flatten(1).amax(1)
            self.add(f"untouched/{step.row}/{v}:max_change", change)
        return step.size


@pytest.fixture
def extensions():
    MECHANISMS.register("laplace_additive")(LaplaceAdditive)
    METRICS.register("untouched")(Untouched)
    yield
    MECHANISMS.pop("laplace_additive")
    METRICS.pop("untouched")


def test_a_family_and_a_metric_added_by_registration_alone(tmp_path, extensions):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "experiment=linear4",
                f"run_dir={tmp_path / 'run'}",
                f"data_root={tmp_path / 'data'}",
                f"evaluate.report_dir={tmp_path / 'report'}",
                "trainer.enable_progress_bar=false",
                "trainer.max_epochs=3",
                "dataset.options.sizes={train: 1000, val: 200, test: 200}",
                "+mechanism.x2={family: laplace_additive, config: {scale: 0.5}}",
                "evaluate.num_samples=100",
                "evaluate.cycles=[1]",
                "evaluate.progress=false",
            ],
        )
    result = train_and_evaluate(cfg)
    scm = SCM.load(result["run_dir"])
    assert type(scm.mechanisms["x2"]) is LaplaceAdditive and scm.mechanisms["x2"].config == {"scale": 0.5}
    report = Path(result["report"])
    meta_metrics = json.loads((report / "metrics.json").read_text())
    got = meta_metrics["metrics"]
    assert "untouched" in meta_metrics["meta"]["metrics"] and (report / "tables" / "untouched.md").is_file()
    rows = {k: v for k, v in got.items() if k.startswith("untouched/")}
    assert "untouched/do(x2)/x1:max_change" in rows and "untouched/do(x4)/x2:max_change" in rows
    assert all(v["mean"] == 0.0 and v["n"] == 100 for v in rows.values()), rows
    # the new family's counterfactuals are exact: the null intervention returns every node
    assert got["composition/null x1/x2:error"]["mean"] < 1e-5
