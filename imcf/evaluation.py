"""`evaluate(cfg)`: load a trained SCM, draw interventions, score its counterfactuals, write a report.

The loop: for every batch of the evaluation split, each metric reads the factual batch; then for every intervened
attribute `t` a value is drawn as the protocol says, the model's counterfactual is computed once, and every
metric scores it. The metrics are objects registered in `imcf.registry.METRICS` (`imcf.metrics.base.Metric`);
the models they read with are loaded (trained and cached when absent) by `imcf.evaluators`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

import imcf.metrics  # noqa: F401  (registers the metrics)
from imcf import memory, threads
from imcf.config import ConfigError, EvaluateConfig, FinetunePredictorsConfig, LoggerConfig, report_dir_of, validate
from imcf.data.base import CausalDataset, sample_mismatch, stack_batch
from imcf.data.datamodule import build_dataset
from imcf.evaluators.cache import dataset_fingerprint
from imcf.evaluators.features import InceptionFeatures, LPIPSDistance
from imcf.evaluators.minimality_vae import load_or_train_vae
from imcf.evaluators.predictors import as_dict, load_or_train_predictors
from imcf.graph import CausalGraph
from imcf.io import ensure_writable, read_yaml
from imcf.metrics.base import (
    CounterfactualStep,
    EvaluationError,
    EvaluatorModels,
    FactualStep,
    Metric,
    Result,
    Setting,
    image_targets,
)
from imcf.metrics.interventions import bin_edges, draw_intervention, groups
from imcf.registry import METRICS
from imcf.report import effectiveness_plot, image_grid, log_report, write_report
from imcf.scm import SCM
from imcf.training.finetune import finetunes

__all__ = [
    "EvaluationError",
    "bin_edges",
    "choose_metrics",
    "draw_intervention",
    "evaluate",
    "evaluate_scm",
    "groups",
    "load_run",
    "support",
]
Batch = dict[str, Tensor]


def resolve_device(accelerator: str) -> torch.device:
    """`cpu`, or the machine's accelerator for `auto`/`gpu`/`cuda` when one is present (`gpu` and `cuda` without
    one: a ConfigError)."""
    if accelerator != "cpu" and torch.accelerator.is_available():
        return torch.device(torch.accelerator.current_accelerator())
    if accelerator in ("gpu", "cuda"):
        raise ConfigError(f"accelerator={accelerator} but this machine has no GPU: use accelerator=cpu (or auto)")
    return torch.device("cpu")


def support(graph: CausalGraph, dataset: CausalDataset) -> dict[str, str]:
    """Why each registered metric cannot be computed for this graph and dataset ('' when it can)."""
    return {name: cls.unsupported(graph, dataset) for name, cls in METRICS.items()}


def choose_metrics(requested: list[str] | None, why_not: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(metrics to compute, notes). None: every supported metric; a list: exactly those, or a clear error."""
    names = list(METRICS)
    if requested is None:
        chosen = [m for m in names if not why_not[m]]
        notes = [f"metric {m!r} skipped: {why_not[m]}" for m in names if why_not[m]]
        return chosen, notes
    if not requested:
        raise EvaluationError(f"compute=[] asks for no metric; name some of {names}, or compute=null for all supported")
    unknown = [m for m in requested if m not in names]
    if unknown:
        raise EvaluationError(f"unknown metric(s) {unknown}; known: {list(names)}")
    bad = [m for m in requested if why_not[m]]
    if bad:
        raise EvaluationError(
            "; ".join(f"metric {m!r} cannot be computed: {why_not[m]}" for m in bad)
            + " (leave compute=null to compute every supported metric)"
        )
    return [m for m in names if m in requested], []


# ------------------------------------------------------------------ entry points


def load_run(run_dir: str | Path) -> tuple[SCM, dict[str, Any]]:
    """The trained SCM of a run directory and its resolved config; clear errors for incomplete runs."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise EvaluationError(f"run_dir={run_dir} is a file, not a run directory (the directory train.py wrote)")
    if not run_dir.is_dir():
        raise EvaluationError(f"run directory {run_dir} does not exist (train first: python train.py ...)")
    for fname in ("graph.yaml", "mechanisms.yaml", "config.yaml"):
        if not (run_dir / fname).is_file():
            raise EvaluationError(f"{run_dir} is not a run directory: {fname} is missing")
    if not list(run_dir.glob("*.ckpt")):
        raise EvaluationError(
            f"run directory {run_dir} has no checkpoints (<unit>.ckpt): no unit has been trained yet; "
            f"run python train.py run_dir={run_dir} first"
        )
    try:
        scm = SCM.load(run_dir)
    except FileNotFoundError as e:
        raise EvaluationError(f"run directory {run_dir} is incomplete: {e}") from None
    run_cfg = read_yaml(run_dir / "config.yaml") or {}
    if "dataset" not in run_cfg or "name" not in (run_cfg["dataset"] or {}):
        raise EvaluationError(f"{run_dir / 'config.yaml'} names no dataset (dataset.name)")
    return scm, run_cfg


def evaluate(cfg: Any) -> str:
    """Evaluate the run in `cfg.run_dir` (see configs/evaluate.yaml); write the report and return its directory."""
    cfg = validate(cfg, EvaluateConfig)
    threads.apply(threads.plan_for(cfg.threads))  # first: torch takes its inter-op thread count only once
    memory.keep_freed_memory()  # counterfactual passes free their activations layer by layer (imcf/memory.py)
    scm, run_cfg = load_run(cfg.run_dir)
    if cfg.logger is None:  # log to the training run's loggers
        cfg.logger = OmegaConf.merge(OmegaConf.structured(LoggerConfig), run_cfg.get("logger") or {})
    ds = run_cfg["dataset"]
    root = cfg.data_root or ds.get("root") or "data"
    report_dir = report_dir_of(cfg.report_dir, cfg.run_dir)
    seed = int((run_cfg.get("finetune_predictors") or {}).get("seed", FinetunePredictorsConfig.seed))
    tuned = {n: seed for n, m in scm.mechanisms.items() if finetunes(m)}
    options = dict(ds.get("options") or {})
    return evaluate_scm(scm, ds["name"], root, options, cfg, report_dir, str(cfg.run_dir), tuned_against=tuned)


def evaluate_scm(
    scm: SCM,
    dataset_name: str,
    data_root: str,
    dataset_options: Mapping[str, Any],
    cfg: Any,
    report_dir: str | Path,
    run_dir: str = "(in memory)",
    tuned_against: Mapping[str, int] | None = None,
) -> str:
    """Evaluate an SCM (trained, loaded or hand-built) on a registered dataset; write the report to `report_dir`.

    `tuned_against`: {image node: seed of the predictors it was counterfactually fine-tuned against}; the report
    says whether the evaluator's predictors (seed `cfg.seed`) are independent of them. `cfg.inference` is applied
    to `scm` (SCM.set_inference_options) for this evaluation and recorded in the report; the SCM's device, mode,
    strictness and mechanisms are as they were afterwards."""
    cfg = validate(OmegaConf.merge({"run_dir": run_dir}, cfg), EvaluateConfig)
    inference = OmegaConf.to_container(cfg.inference) if OmegaConf.is_config(cfg.inference) else dict(cfg.inference)
    started = time.perf_counter()
    # before minutes of counterfactuals: a report that cannot be written would lose them
    ensure_writable(report_dir, "the evaluation report", "set report_dir=... (train.py: evaluate.report_dir=...)")
    device = resolve_device(cfg.accelerator)
    with _evaluation_state(scm, inference, bool(cfg.identify.strict), device):
        setting, names, notes = _setting(scm, dataset_name, data_root, dict(dataset_options), cfg, device)
        metrics = [METRICS[name](setting) for name in names]
        grid = _run(setting, metrics)
        results = _results(setting, metrics)
        notes += [line for metric in metrics for line in metric.notes()]
        notes += _protocol_notes(setting, tuned_against or {})
        report_dir = Path(report_dir)
        config = OmegaConf.to_container(cfg, resolve=True)
        plots = _plots(report_dir, metrics)
        grids, grid_images = _grids(report_dir, grid, run_dir)
        meta = {
            "run_dir": run_dir,
            "dataset": dataset_name,
            "dataset_options": setting.options,
            "split": cfg.split,
            "num_samples": setting.num_samples,
            "seed": int(cfg.seed),
            "protocol": cfg.protocol,
            "inference": inference,
            "device": str(device),
            "metrics": names,
            "intervened": setting.intervened,
            "predictors": setting.models.quality,
            "cached_models": setting.models.files,
            # imcf.identify's verdict of every counterfactual query the SCM answered
            "identifiability": {f"do({', '.join(k)})": v for k, v in scm.verdicts.items()},
            "notes": notes,
            "grids": grids,
            "plots": plots,
            "speed": grid.speed(),
            "seconds": round(time.perf_counter() - started, 3),
            "config": config,
        }
    write_report(report_dir, results, meta)
    log_report(
        cfg.logger if cfg.logger is not None else LoggerConfig(),
        report_dir,
        str(run_dir),
        results,
        grid_images,
        plots,
        config,
    )
    print(f"[imcf] evaluation report: {report_dir.resolve() / 'report.md'}")
    return str(report_dir)


@contextmanager
def _evaluation_state(scm: SCM, inference: Mapping[str, Any], strict: bool, device: torch.device) -> Iterator[None]:
    """Apply the evaluation's inference options, strictness, device and eval mode to `scm`; restore them after."""
    saved = {node: scm.mechanisms[node] for node in inference if node in scm.mechanisms}
    was_strict, was_training = scm.strict, scm.training
    was_device = next((p.device for p in scm.parameters()), torch.device("cpu"))
    try:
        for node, opts in inference.items():
            try:
                scm.set_inference_options(node, opts)
            except (KeyError, TypeError, ValueError) as e:
                raise EvaluationError(str(e.args[0] if e.args else e)) from None
        scm.strict = strict
        scm.to(device).eval()
        yield
    finally:
        for node, mech in saved.items():
            scm.mechanisms[node] = mech
        scm.strict = was_strict
        scm.to(was_device).train(was_training)


def _setting(
    scm: SCM, dataset_name: str, data_root: str, options: dict[str, Any], cfg: Any, device: torch.device
) -> tuple[Setting, list[str], list[str]]:
    """The evaluation's fixed facts, the metrics to compute and the notes on skipped ones."""
    graph = scm.graph
    attrs = [v for v in graph.nodes if not graph.kinds[v].is_image]
    intervened = list(cfg.interventions.nodes) if cfg.interventions.nodes is not None else attrs
    if not intervened:
        raise EvaluationError(f"interventions.nodes is empty: name attributes of graph {graph.name!r} ({attrs}), "
                              "or null for every one")  # fmt: skip
    bad = [t for t in intervened if t not in attrs]
    if bad:  # before the dataset is built: on a fresh data root that renders it first
        raise EvaluationError(f"interventions.nodes: {bad} are not attribute nodes of graph {graph.name!r} ({attrs})")
    dataset = build_dataset(dataset_name, data_root, cfg.split, **options)
    _check_dataset(graph, dataset, dataset_name)
    names, notes = choose_metrics(None if cfg.compute is None else list(cfg.compute), support(graph, dataset))
    n = len(dataset) if cfg.num_samples is None else min(int(cfg.num_samples), len(dataset))
    if cfg.interventions.kind not in ("binned", "marginal"):
        raise EvaluationError(f"interventions.kind must be binned or marginal, got {cfg.interventions.kind!r}")
    # pools of attribute values over the evaluation split, and the benchmark's bins
    items = [dataset[i] for i in range(n)]
    pool = {v: torch.stack([it[v] for it in items]).float() for v in attrs}
    del items
    edges = {
        v: bin_edges(pool[v], int(cfg.interventions.bins))
        for v in attrs
        if graph.kinds[v].name == "continuous" and n > 0
    }
    needs = set().union(*(METRICS[name].requires(cfg) for name in names))
    models = load_models(graph, needs, dataset_name, options, data_root, cfg, device, dataset_fingerprint(dataset))
    cycles = sorted({int(c) for c in cfg.cycles if int(c) > 0})
    setting = Setting(scm, dataset, dataset_name, data_root, options, cfg, device, intervened, cycles, pool, edges,
                      models, n)  # fmt: skip
    return setting, names, notes


def _run(setting: Setting, metrics: list[Metric]) -> Grid:
    """The loop: every metric reads each factual batch, then each batch's counterfactual under every intervention
    (computed once). Returns the first batch's image grid and the time each metric took."""
    cfg, graph, intervened = setting.cfg, setting.graph, setting.intervened
    gen = torch.Generator().manual_seed(int(cfg.seed))
    binned = cfg.interventions.kind == "binned"
    grid = Grid(setting.images, int(cfg.num_grid))
    evalset = Subset(setting.dataset, range(setting.num_samples))
    loader = DataLoader(evalset, batch_size=int(cfg.batch_size), collate_fn=stack_batch)
    for batch in tqdm(loader, desc="evaluating", disable=not cfg.progress):
        batch = {k: v.to(setting.device) for k, v in batch.items()}
        factual = {v: batch[v] for v in graph.nodes}
        step = FactualStep(factual, batch["_index"].cpu())
        with torch.no_grad():
            for metric in metrics:
                with grid.timed(metric.name) as timer:
                    timer.count = metric.factual(step)
            grid.add_factual(step)
            random_t = intervened[int(torch.randint(0, len(intervened), (1,), generator=gen))] if intervened else None
            for t in intervened:
                edges = setting.edges.get(t) if binned else None
                value = draw_intervention(graph.kinds[t], factual[t], setting.pool[t], gen, edges)
                with grid.timed("counterfactual") as timer:
                    cf = setting.scm.counterfactual(factual, {t: value})
                    timer.count = step.size
                cstep = CounterfactualStep(t, value, factual, cf, step.index, random=t == random_t)
                for metric in metrics:
                    with grid.timed(metric.name) as timer:
                        timer.count = metric.update(cstep)
                grid.add_counterfactual(cstep)
        grid.first = False
    return grid


def _results(setting: Setting, metrics: list[Metric]) -> dict[str, Result]:
    """Every metric's results: the per-sample ones ordered by metric, row, cycle and node; then the set-level
    ones (realism, minimality) in their own order."""
    order = list(METRICS)
    per_sample = {k: v for m in metrics if not m.set_level for k, v in m.compute().items()}
    keys = sorted(per_sample, key=lambda k: _order(k, order, setting.intervened, setting.graph))
    results = {k: per_sample[k] for k in keys}
    for m in metrics:
        if m.set_level:
            with torch.no_grad():
                results.update(m.compute())
    return results


def _protocol_notes(setting: Setting, tuned_against: Mapping[str, int]) -> list[str]:
    """Notes on the protocol: binned interventions, the independence of the predictors, poor predictors."""
    cfg, notes = setting.cfg, []
    if cfg.interventions.kind == "binned":
        notes.append(
            f"interventions: continuous values from another of {cfg.interventions.bins} equal bins (benchmark)"
        )
    for m, seed in tuned_against.items():
        if seed == int(cfg.seed):
            notes.append(
                f"NOT INDEPENDENT: {m} was counterfactually fine-tuned against predictors of seed {seed}, the "
                f"evaluator's own: its effectiveness numbers are optimistic (use another finetune_predictors.seed)"
            )
        else:
            notes.append(
                f"{m} was counterfactually fine-tuned against predictors of seed {seed}; effectiveness here uses "
                f"the evaluator's, of seed {int(cfg.seed)} (same data and architecture, separate training run)"
            )
    poor = [f"{m}/{a}" for m, q in setting.models.quality.items() for a, d in q.items() if d["poor"]]
    if poor:
        notes.append(f"POOR predictors {poor}: effectiveness that relies on them is not meaningful")
    return notes


# ------------------------------------------------------------------ evaluator models, grids, plots


def load_models(
    graph: CausalGraph,
    needs: set[str],
    dataset: str,
    options: dict[str, Any],
    data_root: str,
    cfg: Any,
    device: torch.device,
    fingerprint: Mapping[str, Any] | None = None,
) -> EvaluatorModels:
    """Load (training and caching when absent) the evaluator models the chosen metrics require (`needs`)."""
    out = EvaluatorModels()
    images = [v for v in graph.nodes if graph.kinds[v].is_image]
    common = (cfg.accelerator, int(cfg.seed), bool(cfg.progress), fingerprint)
    for m in images if "predictors" in needs else []:
        targets = image_targets(graph, m)
        if targets:
            shape = graph.kinds[m].shape
            model, q, path = load_or_train_predictors(
                dataset, options, data_root, m, shape, targets, cfg.predictors, *common
            )
            out.predictors[m], out.quality[m] = model.to(device), as_dict(q)
            out.files[f"predictors/{m}"] = path
    for m in images if "minimality_vae" in needs else []:
        vae, path = load_or_train_vae(dataset, options, data_root, m, graph.kinds[m].shape, cfg.minimality, *common)
        out.vaes[m] = vae.to(device)
        out.files[f"minimality/{m}"] = path
    for m in images if "features" in needs else []:
        if cfg.realism.features == "inception":
            out.extractors[m] = InceptionFeatures(cfg.realism.inception_weights).to(device).eval()
        elif cfg.realism.features == "predictors":
            if m not in out.predictors:
                raise EvaluationError(f"realism.features=predictors: image {m!r} has no predictor")
            out.extractors[m] = out.predictors[m].features
        else:
            raise EvaluationError(f"realism.features must be predictors or inception, got {cfg.realism.features!r}")
    if "lpips" in needs and images:
        out.lpips = LPIPSDistance().to(device)
    return out


class Grid:
    """The report's image grid of the first batch (factual | interventions | true counterfactuals | null cycles |
    round trips) and the time each metric took over the whole evaluation."""

    def __init__(self, images: list[str], rows: int) -> None:
        self.images, self.rows, self.first = images, rows, True
        self.cols: dict[str, list[tuple[str, Tensor]]] = defaultdict(list)
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add_factual(self, step: FactualStep) -> None:
        if not self.first:
            return
        nulls = step.shared.get("null") or {}
        for m in self.images:
            self.cols[m].append(("factual", step.factual[m][: self.rows]))
            if nulls:
                self.cols[m].append((f"null x{max(nulls)}", nulls[max(nulls)][m][: self.rows]))

    def add_counterfactual(self, step: CounterfactualStep) -> None:
        if not self.first:
            return
        true, back = step.shared.get("true"), step.shared.get("back")
        for m in self.images:
            self.cols[m].append((step.row, step.cf[m][: self.rows]))
            if true is not None:
                self.cols[m].append((f"true {step.row}", true[m][: self.rows]))
            if back:
                self.cols[m].append((f"{step.row} back x1", back[min(back)][m][: self.rows]))

    @contextmanager
    def timed(self, what: str) -> Iterator[Any]:
        """Adds the wall time of the block and `timer.count` counterfactuals (set inside it) to `what`."""
        timer, start = _Count(), time.perf_counter()
        yield timer
        if timer.count or what == "counterfactual":
            self.seconds[what] += time.perf_counter() - start
            self.counts[what] += int(timer.count)

    def speed(self) -> dict[str, dict[str, Any]]:
        return {
            k: {
                "seconds": round(self.seconds[k], 4),
                "counterfactuals": self.counts[k],
                "per_second": self.counts[k] / self.seconds[k] if self.seconds[k] > 0 else None,
            }
            for k in self.seconds
        }


class _Count:
    count: int = 0


def _grids(report_dir: Path, grid: Grid, run_dir: str) -> tuple[list[str], dict[str, Tensor]]:
    paths, images = [], {}
    for m, cols in grid.cols.items():
        cols = sorted(cols, key=lambda c: _grid_rank(c[0]))
        path = report_dir / "grids" / f"{m}.png"
        images[m] = image_grid(path, cols, title=f"{run_dir}: {m}")
        paths.append(str(path.relative_to(report_dir)))
    return paths, images


def _plots(report_dir: Path, metrics: list[Metric]) -> list[str]:
    paths = []
    for metric in metrics:
        for plot in metric.plots():
            path = report_dir / "plots" / f"{plot.name}.png"
            effectiveness_plot(path, plot.title, plot.intended, plot.read, plot.discrete)
            paths.append(str(path.relative_to(report_dir)))
    return paths


def _grid_rank(title: str) -> int:
    """Grid column order: factual, interventions, true counterfactuals, null cycles, round trips."""
    for rank, word in ((0, "factual"), (2, "true "), (3, "null "), (4, " back ")):
        if word in title:
            return rank
    return 1


def _check_dataset(graph: CausalGraph, dataset: CausalDataset, name: str) -> None:
    """The dataset must provide every node of the graph with the graph's shapes."""
    if len(dataset) == 0:
        raise EvaluationError(f"dataset {name!r} split {dataset.split!r} is empty")
    missing, wrong = sample_mismatch(dataset[0], {v: graph.kinds[v].tensor_shape for v in graph.nodes})
    if missing:
        have = sorted(k for k in dataset[0] if not k.startswith("_"))
        raise EvaluationError(f"dataset {name!r} has no node {missing[0]!r} of graph {graph.name!r}; it has {have}")
    if wrong:
        v, got = next(iter(wrong.items()))
        raise EvaluationError(f"dataset {name!r} node {v!r} has shape {got}, graph says {graph.kinds[v].tensor_shape}")


def _order(key: str, metric_order: list[str], intervened: list[str], graph: CausalGraph) -> tuple:
    metric, row, col = (key.split("/", 2) + ["", ""])[:3]
    rank = metric_order.index(metric) if metric in metric_order else len(metric_order)
    rows = [f"do({t})" for t in intervened]
    base = row.split(" x")[0]
    r = rows.index(base) if base in rows else -1
    cyc = int(row.rsplit(" x", 1)[1]) if " x" in row else 0
    node = col.split(":")[0]
    c = graph.nodes.index(node) if node in graph.nodes else len(graph.nodes)
    return (rank, r, cyc, c, col)
