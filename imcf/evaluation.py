"""`evaluate(cfg)`: load a trained SCM, draw interventions, score its counterfactuals, write a report.

The loop is: for every batch of the evaluation split and every intervened attribute `t`, draw a value as the
protocol says, take the model's counterfactual, and hand tensors to the pure metric functions in
`imcf.metrics` (effectiveness, measured, composition, reversibility, realism, minimality, truth).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from imcf import threads
from imcf.config import EvaluateConfig, FinetunePredictorsConfig, LoggerConfig, validate
from imcf.data.base import CausalDataset, stack_batch
from imcf.data.datamodule import build_dataset
from imcf.graph import CausalGraph, NodeKind
from imcf.io import read_yaml
from imcf.mechanisms.latent_image import finetunes
from imcf.metrics.composition import LPIPSDistance, feature_l1, node_distance, null_intervention, repeat
from imcf.metrics.effectiveness import effectiveness, f1_score, labels, mean_and_std
from imcf.metrics.minimality import LatentVAE, counterfactual_latent_divergence, load_or_train_vae
from imcf.metrics.offline import dataset_fingerprint
from imcf.metrics.predictors import AttributePredictor, as_dict, load_or_train_predictors
from imcf.metrics.realism import InceptionFeatures, fid, kid
from imcf.metrics.reversibility import round_trips
from imcf.metrics.truth import truth_scores
from imcf.report import effectiveness_plot, image_grid, write_report
from imcf.scm import SCM

#: every metric the evaluator knows, in report order
METRIC_NAMES = ("effectiveness", "measured", "composition", "reversibility", "realism", "minimality", "truth")
Batch = dict[str, Tensor]


class EvaluationError(ValueError):
    """The run, dataset or requested metrics cannot be evaluated as asked; the message says why."""


def resolve_device(accelerator: str) -> torch.device:
    """`cpu`, or the machine's accelerator for `auto`/`gpu` when one is present."""
    if accelerator != "cpu" and torch.accelerator.is_available():
        return torch.device(torch.accelerator.current_accelerator())
    if accelerator == "gpu":
        raise RuntimeError("accelerator=gpu but no accelerator is available; use accelerator=cpu")
    return torch.device("cpu")


# ------------------------------------------------------------------ interventions


def bin_edges(pool: Tensor, bins: int) -> Tensor:
    """Inner edges (bins - 1,) of `bins` equal bins over the range of `pool` (the benchmark's 9 bins over the
    min-max scaled range [-1, 1] are the same bins)."""
    lo, hi = pool.min().item(), pool.max().item()
    return torch.linspace(lo, hi, bins + 1)[1:-1]


def groups(kind: NodeKind, value: Tensor, edges: Tensor | None) -> Tensor:
    """Group label (B,) of a batch value: its bin for continuous nodes, its class otherwise."""
    if kind.name == "continuous":
        return torch.bucketize(value.reshape(-1).float().cpu(), edges, right=True)
    return labels(kind, value.cpu())


def draw_intervention(
    kind: NodeKind,
    factual: Tensor,
    pool: Tensor,
    gen: torch.Generator,
    edges: Tensor | None = None,
) -> Tensor:
    """Intervention values for one node, seeded by `gen`.

    Binary: the other class. Categorical: another class, uniformly. Continuous: a value drawn uniformly from
    `pool` (the node's values in the evaluation split); with `edges`, only from values in another bin than the
    factual's (the benchmark), otherwise from all of them (the marginal).
    """
    b = factual.shape[0]
    if kind.name == "binary":
        return 1.0 - factual
    if kind.name == "categorical":
        k = int(kind.num_classes)
        shift = torch.randint(1, k, (b,), generator=gen)
        return torch.nn.functional.one_hot((factual.argmax(1).cpu() + shift) % k, k).float().to(factual)
    if edges is None:
        return pool[torch.randint(0, pool.shape[0], (b,), generator=gen)].to(factual)
    pool_bins = torch.bucketize(pool.reshape(-1), edges, right=True)
    order = torch.argsort(pool_bins, stable=True)
    counts = torch.bincount(pool_bins, minlength=len(edges) + 1)
    starts = torch.cumsum(counts, 0) - counts
    fb = torch.bucketize(factual.reshape(-1).float().cpu(), edges, right=True)
    eligible = pool.shape[0] - counts[fb]
    if (eligible == 0).any():
        raise EvaluationError("every value of the pool lies in one bin; cannot draw a value from another bin")
    r = (torch.rand(b, generator=gen) * eligible).long().clamp(max=eligible - 1)
    idx = r + (r >= starts[fb]).long() * counts[fb]  # skip the factual's own bin
    return pool[order[idx]].to(factual)


# ------------------------------------------------------------------ what can be measured


def measurer(dataset: CausalDataset) -> Callable[[Tensor], dict[str, Tensor]] | None:
    """Predictor-free attribute measurements of images (`dataset.measure`), if the dataset has them."""
    return dataset.measure if dataset.has_measurements else None


def image_targets(graph: CausalGraph, image: str) -> dict[str, str]:
    """Attributes the predictors of `image` read: its non-image ancestors, as kind strings, in graph order."""
    anc = graph.ancestors(image)
    return {n: str(graph.kinds[n]) for n in graph.nodes if n in anc and not graph.kinds[n].is_image}


def support(graph: CausalGraph, dataset: CausalDataset) -> dict[str, str]:
    """Why each metric cannot be computed for this graph and dataset ('' when it can)."""
    images = [n for n in graph.nodes if graph.kinds[n].is_image]
    no_image = f"graph {graph.name!r} has no image node" if not images else ""
    no_targets = no_image or (
        "" if any(image_targets(graph, m) for m in images) else "no image node has attribute ancestors"
    )
    name = getattr(type(dataset), "registry_name", type(dataset).__name__)
    return {
        "effectiveness": no_targets,
        "measured": no_targets
        or ("" if measurer(dataset) is not None else f"dataset {name!r} has no direct attribute measurements"),
        "composition": "",
        "reversibility": "",
        "realism": no_image,
        "minimality": no_image,
        "truth": "" if dataset.has_ground_truth else f"dataset {name!r} has no ground-truth counterfactuals",
    }


def choose_metrics(requested: list[str] | None, why_not: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(metrics to compute, notes). None: every supported metric; a list: exactly those, or a clear error."""
    if requested is None:
        chosen = [m for m in METRIC_NAMES if not why_not[m]]
        notes = [f"metric {m!r} skipped: {why_not[m]}" for m in METRIC_NAMES if why_not[m]]
        return chosen, notes
    unknown = [m for m in requested if m not in METRIC_NAMES]
    if unknown:
        raise EvaluationError(f"unknown metric(s) {unknown}; known: {list(METRIC_NAMES)}")
    bad = [m for m in requested if why_not[m]]
    if bad:
        raise EvaluationError(
            "; ".join(f"metric {m!r} cannot be computed: {why_not[m]}" for m in bad)
            + " (leave compute=null to compute every supported metric)"
        )
    return [m for m in METRIC_NAMES if m in requested], []


# ------------------------------------------------------------------ accumulation


class Store:
    """Per-sample values collected over batches, keyed by metric key; timing per metric."""

    def __init__(self) -> None:
        self.values: dict[str, list[Tensor]] = defaultdict(list)
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, key: str, value: Tensor) -> None:
        self.values[key].append(value.detach().float().reshape(-1).cpu())

    def cat(self, key: str) -> Tensor:
        return torch.cat(self.values[key]) if self.values.get(key) else torch.zeros(0)

    def timed(self, metric: str, n: int):
        """Context manager adding wall time and `n` scored counterfactuals to `metric`."""
        store = self

        class _Timer:
            def __enter__(self) -> None:
                self.t = time.perf_counter()

            def __exit__(self, *exc: Any) -> None:
                store.seconds[metric] += time.perf_counter() - self.t
                store.counts[metric] += n

        return _Timer()


def summary(x: Tensor) -> dict[str, Any]:
    """{"mean", "std", "n"} of the finite values of a 1-D tensor."""
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return {"mean": None, "std": None, "n": 0}
    mean, std = mean_and_std(x)
    return {"mean": mean, "std": std, "n": int(x.numel())}


# ------------------------------------------------------------------ entry points


def load_run(run_dir: str | Path) -> tuple[SCM, dict[str, Any]]:
    """The trained SCM of a run directory and its resolved config; clear errors for incomplete runs."""
    run_dir = Path(run_dir)
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
    scm, run_cfg = load_run(cfg.run_dir)
    if cfg.logger is None:  # log to the training run's loggers
        cfg.logger = OmegaConf.merge(OmegaConf.structured(LoggerConfig), run_cfg.get("logger") or {})
    ds = run_cfg["dataset"]
    root = cfg.data_root or ds.get("root") or "data"
    report_dir = cfg.report_dir or str(Path("reports") / Path(cfg.run_dir).name)
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
    to `scm` (SCM.set_inference_options) before anything else and recorded in the report."""
    cfg = validate(OmegaConf.merge({"run_dir": run_dir}, cfg), EvaluateConfig)
    inference = OmegaConf.to_container(cfg.inference) if OmegaConf.is_config(cfg.inference) else dict(cfg.inference)
    for node, opts in inference.items():
        try:
            scm.set_inference_options(node, opts)
        except (KeyError, TypeError, ValueError) as e:
            raise EvaluationError(str(e.args[0] if e.args else e)) from None
    started = time.perf_counter()
    scm.strict = bool(cfg.identify.strict)
    device = resolve_device(cfg.accelerator)
    scm = scm.to(device).eval()
    graph = scm.graph
    options = dict(dataset_options)
    dataset = build_dataset(dataset_name, data_root, cfg.split, **options)
    _check_dataset(graph, dataset, dataset_name)
    metrics, notes = choose_metrics(None if cfg.compute is None else list(cfg.compute), support(graph, dataset))
    n = len(dataset) if cfg.num_samples is None else min(int(cfg.num_samples), len(dataset))
    evalset = Subset(dataset, range(n))
    images = [v for v in graph.nodes if graph.kinds[v].is_image]
    attrs = [v for v in graph.nodes if not graph.kinds[v].is_image]
    intervened = list(cfg.interventions.nodes) if cfg.interventions.nodes is not None else attrs
    bad = [t for t in intervened if t not in attrs]
    if bad:
        raise EvaluationError(f"interventions.nodes: {bad} are not attribute nodes of graph {graph.name!r} ({attrs})")
    cycles = sorted({int(c) for c in cfg.cycles if int(c) > 0})
    gen = torch.Generator().manual_seed(int(cfg.seed))

    # pools of attribute values over the evaluation split, and the benchmark's bins
    items = [dataset[i] for i in range(n)]
    pool = {v: torch.stack([it[v] for it in items]).float() for v in attrs}
    del items
    edges = {
        v: bin_edges(pool[v], int(cfg.interventions.bins))
        for v in attrs
        if graph.kinds[v].name == "continuous" and n > 0
    }
    binned = cfg.interventions.kind == "binned"
    if cfg.interventions.kind not in ("binned", "marginal"):
        raise EvaluationError(f"interventions.kind must be binned or marginal, got {cfg.interventions.kind!r}")

    progress = bool(cfg.progress)
    models = offline_models(graph, metrics, dataset_name, options, data_root, cfg, device, dataset_fingerprint(dataset))
    predictors, quality, vaes, extractors, lpips = (
        models.predictors,
        models.quality,
        models.vaes,
        models.extractors,
        models.lpips,
    )
    measure = measurer(dataset) if "measured" in metrics else None

    def distances(prefix: str, out: Batch, factual: Batch, store: Store) -> None:
        for v in graph.nodes:
            kind = graph.kinds[v]
            if kind.is_image:
                store.add(f"{prefix}/{v}:l1", node_distance(kind, out[v], factual[v]))
                if v in predictors:
                    f = predictors[v].features
                    store.add(f"{prefix}/{v}:feature_l1", feature_l1(f(out[v]), f(factual[v])))
                if lpips is not None:
                    store.add(f"{prefix}/{v}:lpips", lpips(out[v], factual[v]))
            else:
                store.add(f"{prefix}/{v}:error", node_distance(kind, out[v], factual[v]))

    store = Store()
    labels_store: dict[str, list[tuple[Tensor, Tensor]]] = defaultdict(list)
    feats: dict[str, list[Tensor]] = defaultdict(list)
    posts: dict[str, list[tuple[Tensor, Tensor]]] = defaultdict(list)
    plot_data: dict[tuple[str, str], list[tuple[Tensor, Tensor]]] = defaultdict(list)
    grid_cols: dict[str, list[tuple[str, Tensor]]] = defaultdict(list)
    measured_left = {t: int(cfg.measured_max_samples or n) for t in intervened}
    truth_missing: set[str] = set()
    loader = DataLoader(evalset, batch_size=int(cfg.batch_size), collate_fn=stack_batch)
    first = True
    for batch in tqdm(loader, desc="evaluating", disable=not progress):
        batch = {k: v.to(device) for k, v in batch.items()}
        factual = {v: batch[v] for v in graph.nodes}
        index = batch["_index"].cpu()
        b = index.shape[0]
        if first:
            for m in images:
                grid_cols[m].append(("factual", factual[m][: cfg.num_grid]))
        with torch.no_grad():
            if "realism" in metrics or "minimality" in metrics:
                for m in images:
                    if m in extractors:
                        feats[f"{m}|factual"].append(extractors[m](factual[m]).cpu())
                    if m in vaes:
                        posts[f"{m}|factual"].append(tuple(p.cpu() for p in vaes[m].posterior(factual[m])))
            if "composition" in metrics:
                with store.timed("composition", b * max(cycles, default=0)):
                    outs = repeat(scm.counterfactual, factual, lambda x: null_intervention(graph, x), cycles)
                    for k, out in outs.items():
                        distances(f"composition/null x{k}", out, factual, store)
                if "realism" in metrics and outs:  # the realism of a reconstruction: what counterfactuals compare to
                    for m, f in extractors.items():
                        feats[f"{m}|null x{min(outs)}"].append(f(outs[min(outs)][m]).cpu())
                if first:
                    for m in images:
                        k = max(outs)
                        grid_cols[m].append((f"null x{k}", outs[k][m][: cfg.num_grid]))
            random_t = intervened[int(torch.randint(0, len(intervened), (1,), generator=gen))] if intervened else None
            for t in intervened:
                kind = graph.kinds[t]
                value = draw_intervention(kind, factual[t], pool[t], gen, edges.get(t) if binned else None)
                row = f"do({t})"
                with store.timed("counterfactual", b):
                    cf = scm.counterfactual(factual, {t: value})
                if first:
                    for m in images:
                        grid_cols[m].append((row, cf[m][: cfg.num_grid]))
                if "effectiveness" in metrics:
                    with store.timed("effectiveness", b):
                        for m, model in predictors.items():
                            read = model(cf[m], cf)
                            for a in model.kinds:
                                for name, s in effectiveness(graph.kinds[a], read[a], cf[a]).items():
                                    store.add(f"effectiveness/{row}/{a}:{name}", s)
                                if graph.kinds[a].name != "continuous":
                                    lab = (labels(graph.kinds[a], read[a]).cpu(), labels(graph.kinds[a], cf[a]).cpu())
                                    labels_store[f"effectiveness/{row}/{a}:f1"].append(lab)
                            if t in model.kinds:
                                intended = cf[t] if kind.name == "continuous" else labels(kind, cf[t])[:, None]
                                got = read[t] if kind.name == "continuous" else labels(kind, read[t])[:, None]
                                plot_data[(m, t)].append((intended.cpu(), got.cpu()))
                if measure is not None and measured_left[t] > 0:
                    k = min(b, measured_left[t])
                    measured_left[t] -= k
                    with store.timed("measured", k):
                        for m in images:
                            got = measure(cf[m][:k])
                            for a, vals in got.items():
                                if a in graph.kinds and graph.kinds[a].name == "continuous":
                                    err = (vals.reshape(-1).to(cf[a]) - cf[a][:k].reshape(-1)).abs()
                                    store.add(f"measured/{row}/{a}:mae", err)
                if "truth" in metrics:
                    with store.timed("truth", b):
                        true = dataset.true_counterfactual(index, {t: value.cpu()})
                        if true is None:
                            truth_missing.add(t)
                        else:
                            for v in graph.nodes:
                                for name, s in truth_scores(graph.kinds[v], cf[v], true[v].to(device)).items():
                                    store.add(f"truth/{row}/{v}:{name}", s)
                            if first:
                                for m in images:
                                    grid_cols[m].append((f"true {row}", true[m][: cfg.num_grid]))
                if "realism" in metrics:
                    with store.timed("realism", b):
                        for m, f in extractors.items():
                            fc = f(cf[m]).cpu()
                            feats[f"{m}|{row}"].append(fc)
                            if t == random_t:
                                feats[f"{m}|random do"].append(fc)
                if "minimality" in metrics:
                    with store.timed("minimality", b):
                        for m, vae in vaes.items():
                            posts[f"{m}|{row}"].append(tuple(p.cpu() for p in vae.posterior(cf[m])))
                        posts[f"groups|{row}"].append(
                            (groups(kind, factual[t], edges.get(t)), groups(kind, value, edges.get(t)))
                        )
                if "reversibility" in metrics:
                    with store.timed("reversibility", b * 2 * max(cycles, default=0)):
                        outs = round_trips(scm.counterfactual, factual, {t: value}, cycles)
                        for k, out in outs.items():
                            distances(f"reversibility/{row} x{k}", out, factual, store)
                    if first:
                        for m in images:
                            grid_cols[m].append((f"{row} back x1", outs[min(outs)][m][: cfg.num_grid]))
        first = False

    # ---------------------------------------------------------------- reduce to numbers
    results: dict[str, dict[str, Any]] = {}
    for key in store.values:
        results[key] = summary(store.cat(key))
    for key, parts in labels_store.items():
        pred, true = torch.cat([p for p, _ in parts]), torch.cat([q for _, q in parts])
        attr = key.rsplit("/", 1)[1].split(":")[0]
        k = graph.kinds[attr]
        results[key] = {
            "mean": f1_score(pred, true, 2 if k.name == "binary" else int(k.num_classes)),
            "std": None,
            "n": int(pred.numel()),
        }
    results = {k: results[k] for k in sorted(results, key=lambda k: _order(k, intervened, graph))}
    if "realism" in metrics and n > 1:
        with store.timed("realism", 0):
            ref_n = realism_results(
                results, feats, extractors, intervened, dataset_name, data_root, options, cfg, device
            )
        notes.append(
            f"realism: {cfg.realism.features} features; {ref_n} real images from the "
            f"{cfg.realism.reference_split} split"
        )
    if "minimality" in metrics and n > 1:
        with store.timed("minimality", 0):
            for m in vaes:
                minimality_results(results, posts, m, graph, intervened, pool, edges, cfg.minimality.weights)
    for t in sorted(truth_missing):
        notes.append(f"truth: the dataset has no true counterfactual under do({t}); that row is left out")
    if "measured" in metrics:
        notes.append(f"measured: morphometrics on at most {cfg.measured_max_samples} counterfactuals per intervention")
    if binned:
        notes.append(
            f"interventions: continuous values from another of {cfg.interventions.bins} equal bins (benchmark)"
        )
    for m, seed in (tuned_against or {}).items():
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
    poor = [f"{m}/{a}" for m, q in quality.items() for a, d in q.items() if d["poor"]]
    if poor:
        notes.append(f"POOR predictors {poor}: effectiveness that relies on them is not meaningful")

    # ---------------------------------------------------------------- report
    report_dir = Path(report_dir)
    grids, plots, grid_images = [], [], {}
    for m, cols in grid_cols.items():
        # factual | each intervention | true counterfactuals | null cycles | round trips
        cols = sorted(cols, key=lambda c: _grid_rank(c[0]))
        path = report_dir / "grids" / f"{m}.png"
        grid_images[m] = image_grid(path, cols, title=f"{run_dir}: {m}")
        grids.append(str(path.relative_to(report_dir)))
    for (m, t), parts in plot_data.items():
        intended, got = torch.cat([p for p, _ in parts])[:5000], torch.cat([q for _, q in parts])[:5000]
        path = report_dir / "plots" / f"effectiveness_{m}_{t}.png"
        effectiveness_plot(path, f"do({t}): {t} read off {m}", intended, got, graph.kinds[t].name != "continuous")
        plots.append(str(path.relative_to(report_dir)))
    speed = {
        k: {
            "seconds": round(store.seconds[k], 4),
            "counterfactuals": store.counts[k],
            "per_second": store.counts[k] / store.seconds[k] if store.seconds[k] > 0 else None,
        }
        for k in store.seconds
    }
    meta = {
        "run_dir": run_dir,
        "dataset": dataset_name,
        "dataset_options": options,
        "split": cfg.split,
        "num_samples": n,
        "seed": int(cfg.seed),
        "protocol": cfg.protocol,
        "inference": inference,
        "device": str(device),
        "metrics": metrics,
        "intervened": intervened,
        "predictors": quality,
        "cached_models": models.files,
        # imcf.identify's verdict of every counterfactual query the SCM answered
        "identifiability": {f"do({', '.join(k)})": v for k, v in scm.verdicts.items()},
        "notes": notes,
        "grids": grids,
        "plots": plots,
        "speed": speed,
        "seconds": round(time.perf_counter() - started, 3),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_report(report_dir, results, meta)
    _log(cfg, report_dir, str(run_dir), results, grid_images, plots)
    print(f"[imcf] evaluation report: {report_dir.resolve() / 'report.md'}")
    return str(report_dir)


# ------------------------------------------------------------------ offline models and set-level metrics


@dataclass
class OfflineModels:
    """The readers the metrics need: predictors (and their test quality), VAEs, realism features, LPIPS."""

    predictors: dict[str, AttributePredictor] = field(default_factory=dict)
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    vaes: dict[str, LatentVAE] = field(default_factory=dict)
    extractors: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    lpips: LPIPSDistance | None = None
    files: dict[str, str] = field(default_factory=dict)


def offline_models(
    graph: CausalGraph,
    metrics: list[str],
    dataset: str,
    options: dict[str, Any],
    data_root: str,
    cfg: Any,
    device: torch.device,
    fingerprint: Mapping[str, Any] | None = None,
) -> OfflineModels:
    """Load (training and caching when absent) every offline model the chosen metrics need."""
    out = OfflineModels()
    images = [v for v in graph.nodes if graph.kinds[v].is_image]
    common = (cfg.accelerator, int(cfg.seed), bool(cfg.progress), fingerprint)
    need_predictors = images and (
        {"effectiveness", "composition", "reversibility"} & set(metrics)
        or ("realism" in metrics and cfg.realism.features == "predictors")
    )
    for m in images if need_predictors else []:
        targets = image_targets(graph, m)
        if targets:
            shape = graph.kinds[m].shape
            model, q, path = load_or_train_predictors(
                dataset, options, data_root, m, shape, targets, cfg.predictors, *common
            )
            out.predictors[m], out.quality[m] = model.to(device), as_dict(q)
            out.files[f"predictors/{m}"] = path
    for m in images if "minimality" in metrics else []:
        vae, path = load_or_train_vae(dataset, options, data_root, m, graph.kinds[m].shape, cfg.minimality, *common)
        out.vaes[m] = vae.to(device)
        out.files[f"minimality/{m}"] = path
    for m in images if "realism" in metrics else []:
        if cfg.realism.features == "inception":
            out.extractors[m] = InceptionFeatures(cfg.realism.inception_weights).to(device).eval()
        elif cfg.realism.features == "predictors":
            if m not in out.predictors:
                raise EvaluationError(f"realism.features=predictors: image {m!r} has no predictor")
            out.extractors[m] = out.predictors[m].features
        else:
            raise EvaluationError(f"realism.features must be predictors or inception, got {cfg.realism.features!r}")
    if cfg.lpips and images and {"composition", "reversibility"} & set(metrics):
        out.lpips = LPIPSDistance().to(device)
    return out


@torch.no_grad()
def realism_results(
    results: dict[str, dict[str, Any]],
    feats: Mapping[str, list[Tensor]],
    extractors: Mapping[str, Callable[[Tensor], Tensor]],
    intervened: list[str],
    dataset: str,
    data_root: str,
    options: dict[str, Any],
    cfg: Any,
    device: torch.device,
) -> int:
    """FID / KID of every collected feature set against the reference split; returns the reference size."""
    real_split = build_dataset(dataset, data_root, cfg.realism.reference_split, **options)
    limit = cfg.realism.max_reference
    ref_n = len(real_split) if limit is None else min(len(real_split), int(limit))
    loader = DataLoader(Subset(real_split, range(ref_n)), batch_size=int(cfg.batch_size), collate_fn=stack_batch)
    real_feats: dict[str, list[Tensor]] = defaultdict(list)
    desc = f"realism reference ({cfg.realism.reference_split})"
    for rb in tqdm(loader, desc=desc, disable=not cfg.progress):
        for m, f in extractors.items():
            real_feats[m].append(f(rb[m].to(device)).cpu())
    for m in extractors:
        real = torch.cat(real_feats[m])
        nulls = sorted({k.split("|", 1)[1] for k in feats if k.startswith(f"{m}|null x")})
        for row in ["factual", *nulls, *[f"do({t})" for t in intervened], "random do"]:
            fake = torch.cat(feats[f"{m}|{row}"]) if feats.get(f"{m}|{row}") else torch.zeros(0)
            if fake.shape[0] < 2:
                continue
            results[f"realism/{row}/{m}:fid"] = {"mean": fid(real, fake), "std": None, "n": int(fake.shape[0])}
            subsets, size = int(cfg.realism.kid_subsets), int(cfg.realism.kid_subset_size)
            mean, std = kid(real, fake, subsets, size, int(cfg.seed))
            results[f"realism/{row}/{m}:kid"] = {"mean": mean, "std": std, "n": int(fake.shape[0])}
    return ref_n


def minimality_results(
    results: dict[str, dict[str, Any]],
    posts: Mapping[str, list[tuple[Tensor, Tensor]]],
    image: str,
    graph: CausalGraph,
    intervened: list[str],
    pool: Mapping[str, Tensor],
    edges: Mapping[str, Tensor],
    weights: list[float],
) -> None:
    """CLD and latent KL per intervention; the reference set is the factual evaluation images."""
    ref = tuple(torch.cat([p[i] for p in posts[f"{image}|factual"]]) for i in range(2))
    for t in intervened:
        row = f"do({t})"
        cf_post = tuple(torch.cat([p[i] for p in posts[f"{image}|{row}"]]) for i in range(2))
        g_f = torch.cat([g for g, _ in posts[f"groups|{row}"]])
        g_cf = torch.cat([g for _, g in posts[f"groups|{row}"]])
        g_ref = groups(graph.kinds[t], pool[t], edges.get(t))
        out = counterfactual_latent_divergence(ref, cf_post, ref, g_ref, g_f, g_cf, weights)
        results[f"minimality/{row}/{image}:cld"] = summary(out["cld"])
        results[f"minimality/{row}/{image}:latent_kl"] = summary(out["latent_kl"])


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
    item = dataset[0]
    for v in graph.nodes:
        if v not in item:
            raise EvaluationError(f"dataset {name!r} has no node {v!r} of graph {graph.name!r}; it has {sorted(item)}")
        if tuple(item[v].shape) != graph.kinds[v].tensor_shape:
            raise EvaluationError(
                f"dataset {name!r} node {v!r} has shape {tuple(item[v].shape)}, "
                f"graph says {graph.kinds[v].tensor_shape}"
            )


def _order(key: str, intervened: list[str], graph: CausalGraph) -> tuple:
    metric, row, col = (key.split("/", 2) + ["", ""])[:3]
    rank = METRIC_NAMES.index(metric) if metric in METRIC_NAMES else len(METRIC_NAMES)
    rows = [f"do({t})" for t in intervened]
    base = row.split(" x")[0]
    r = rows.index(base) if base in rows else -1
    cyc = int(row.rsplit(" x", 1)[1]) if " x" in row else 0
    node = col.split(":")[0]
    c = graph.nodes.index(node) if node in graph.nodes else len(graph.nodes)
    return (rank, r, cyc, c, col)


def _log(
    cfg: Any,
    report_dir: Path,
    run_dir: str,
    results: dict[str, dict[str, Any]],
    grids: dict[str, Tensor],
    plots: list[str],
) -> None:
    """Send the metrics (scalars and, for wandb, a table), grids and plots to the loggers: those of the training
    run (`logger: null`, under run_dir/logs, in the run's wandb group, a run named `evaluate`) or the given ones."""
    from PIL import Image

    from imcf.training.loggers import build_loggers, finish_loggers, log_images, log_metrics, wandb_ids

    run = Path(run_dir)
    trained_here = (run / "config.yaml").is_file()
    logger_cfg = cfg.logger if cfg.logger is not None else LoggerConfig()
    group = wandb_ids(run, "evaluate")[0] if trained_here else None
    loggers = build_loggers(logger_cfg, (run if trained_here else report_dir) / "logs", "evaluate", group=group)
    if not loggers:
        return
    flat = {f"eval/{k}": float(v["mean"]) for k, v in results.items() if v.get("mean") is not None}
    flat = {k: v for k, v in flat.items() if math.isfinite(v)}
    log_metrics(loggers, flat)
    for m, img in grids.items():
        log_images(loggers, f"eval/grid/{m}", img)
    for rel in plots:
        rgb = np.asarray(Image.open(report_dir / rel).convert("RGB")).copy()
        log_images(loggers, f"eval/plot/{Path(rel).stem}", torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            lg.log_table(key="eval/metrics", columns=["metric", "mean"], data=[[k, v] for k, v in flat.items()])
    finish_loggers(loggers, OmegaConf.to_container(cfg, resolve=True), flat)
