"""The metric contract: what the evaluation loop (`imcf.evaluation`) hands a metric and what it gives back.

A metric is a class registered in `imcf.registry.METRICS` under its name (the name `compute=[...]` and the report
use). The loop builds one per evaluation with the run-wide `Setting`, then, for every batch, calls `factual(step)`
once and `update(step)` once per intervened attribute with that batch's counterfactual (computed once and shared
by every metric), and finally `compute()` for the results. A metric declares which evaluator models it reads
(`requires`) and says when a graph or dataset cannot support it (`unsupported`). Adding a metric is one file in
`imcf/metrics/` imported by `imcf/metrics/__init__.py`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from imcf.graph import CausalGraph
from imcf.scores import mean_and_std

if TYPE_CHECKING:
    from imcf.data.base import CausalDataset
    from imcf.evaluators.features import LPIPSDistance
    from imcf.evaluators.minimality_vae import LatentVAE
    from imcf.evaluators.predictors import AttributePredictor
    from imcf.scm import SCM

Batch = dict[str, Tensor]


class EvaluationError(ValueError):
    """The run, dataset or requested metrics cannot be evaluated as asked; the message says why."""


Result = dict[str, Any]  # {"mean": float | None, "std": float | None, "n": int}


@dataclass
class EvaluatorModels:
    """The readers metrics use: predictors (and their test quality), minimality VAEs, realism features, LPIPS."""

    predictors: dict[str, AttributePredictor] = field(default_factory=dict)
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    vaes: dict[str, LatentVAE] = field(default_factory=dict)
    extractors: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    lpips: LPIPSDistance | None = None
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class Setting:
    """What stays fixed over one evaluation: the model, the data, the protocol's choices and the readers."""

    scm: SCM
    dataset: CausalDataset
    dataset_name: str
    data_root: str
    options: dict[str, Any]
    cfg: Any  # imcf.config.EvaluateConfig
    device: torch.device
    intervened: list[str]
    cycles: list[int]
    pool: dict[str, Tensor]  # every attribute's values over the evaluated samples
    edges: dict[str, Tensor]  # the benchmark's bin edges of continuous attributes
    models: EvaluatorModels
    num_samples: int

    @property
    def graph(self) -> CausalGraph:
        return self.scm.graph

    @property
    def images(self) -> list[str]:
        return [v for v in self.graph.nodes if self.graph.kinds[v].is_image]


@dataclass
class FactualStep:
    """One batch of factual samples. `shared` carries what one metric computed for others (the null cycles)."""

    factual: Batch
    index: Tensor
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.index.shape[0])


@dataclass
class CounterfactualStep:
    """One batch's counterfactual under do(target = value); `random` marks the batch's randomly chosen target
    (realism's "random do" row). `shared` carries what one metric computed for others (true counterfactuals,
    round trips)."""

    target: str
    value: Tensor
    factual: Batch
    cf: Batch
    index: Tensor
    random: bool = False
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def row(self) -> str:
        return f"do({self.target})"

    @property
    def size(self) -> int:
        return int(self.index.shape[0])


@dataclass
class Plot:
    """Intended against read values of one attribute under its intervention (the report draws it)."""

    name: str
    title: str
    intended: Tensor
    read: Tensor
    discrete: bool


class Metric:
    """Base of every metric: per-sample values collected under result keys `<metric>/<row>/<node>:<stat>` and
    summarised by `compute`; subclasses override the hooks they need."""

    name: ClassVar[str] = ""
    #: results from whole sets (FID, CLD): listed after the per-sample metrics, in their own order
    set_level: ClassVar[bool] = False

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self.values: dict[str, list[Tensor]] = defaultdict(list)

    @classmethod
    def requires(cls, cfg: Any) -> set[str]:
        """Evaluator models this metric reads under `cfg`: "predictors", "minimality_vae", "features", "lpips"."""
        return set()

    @classmethod
    def unsupported(cls, graph: CausalGraph, dataset: CausalDataset) -> str:
        """Why this metric cannot be computed for the graph and dataset; '' when it can."""
        return ""

    def factual(self, step: FactualStep) -> int:
        """Read a factual batch (before its counterfactuals); returns the number of counterfactuals scored."""
        return 0

    def update(self, step: CounterfactualStep) -> int:
        """Score one batch's counterfactual; returns the number of counterfactuals scored (for the speed table)."""
        return 0

    def compute(self) -> dict[str, Result]:
        """The results: every collected key summarised over its finite values."""
        return {key: summary(torch.cat(parts)) for key, parts in self.values.items()}

    def notes(self) -> list[str]:
        """Lines for the report's notes."""
        return []

    def plots(self) -> list[Plot]:
        """Scatter plots of intended against read values for the report (`plots/<name>.png`)."""
        return []

    def add(self, key: str, value: Tensor) -> None:
        """Collect per-sample values (B,) under a result key."""
        self.values[key].append(value.detach().float().reshape(-1).cpu())


def summary(x: Tensor) -> Result:
    """{"mean", "std", "n"} of the finite values of a 1-D tensor."""
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return {"mean": None, "std": None, "n": 0}
    mean, std = mean_and_std(x)
    return {"mean": mean, "std": std, "n": int(x.numel())}


def image_targets(graph: CausalGraph, image: str) -> dict[str, str]:
    """Attributes the predictors of `image` read: its non-image ancestors, as kind strings, in graph order."""
    anc = graph.ancestors(image)
    return {n: str(graph.kinds[n]) for n in graph.nodes if n in anc and not graph.kinds[n].is_image}


def no_image(graph: CausalGraph) -> str:
    """'' when the graph has an image node, else why image metrics cannot be computed."""
    return "" if any(graph.kinds[v].is_image for v in graph.nodes) else f"graph {graph.name!r} has no image node"


def no_targets(graph: CausalGraph) -> str:
    """'' when some image node has attribute ancestors to read back, else why."""
    images = [n for n in graph.nodes if graph.kinds[n].is_image]
    return no_image(graph) or (
        "" if any(image_targets(graph, m) for m in images) else "no image node has attribute ancestors"
    )


def dataset_name(dataset: Any) -> str:
    return getattr(type(dataset), "registry_name", type(dataset).__name__)
