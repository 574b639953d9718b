"""`evaluate(cfg)`: load a trained SCM, draw interventions, score counterfactuals, write a report."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from imcf.config import EvaluateConfig, validate
from imcf.data.base import stack_batch
from imcf.data.datamodule import build_dataset
from imcf.graph import CausalGraph, NodeKind
from imcf.io import read_yaml
from imcf.report import write_report
from imcf.scm import SCM


def resolve_device(accelerator: str) -> torch.device:
    """`cpu`, or the machine's accelerator for `auto`/`gpu` when one is present."""
    if accelerator != "cpu" and torch.accelerator.is_available():
        return torch.device(torch.accelerator.current_accelerator())
    if accelerator == "gpu":
        raise RuntimeError("accelerator=gpu but no accelerator is available; use accelerator=cpu")
    return torch.device("cpu")


def draw_intervention(kind: NodeKind, factual: Tensor, pool: Tensor, gen: torch.Generator) -> Tensor:
    """Intervention values for one node: another class for discrete nodes, a marginal draw otherwise.

    Continuous values are drawn from `pool` (the node's values in the evaluation split).
    """
    b = factual.shape[0]
    if kind.name == "binary":
        return 1.0 - factual
    if kind.name == "categorical":
        k = int(kind.num_classes)
        shift = torch.randint(1, k, (b,), generator=gen)
        return torch.nn.functional.one_hot((factual.argmax(1).cpu() + shift) % k, k).float().to(factual)
    idx = torch.randint(0, pool.shape[0], (b,), generator=gen)
    return pool[idx].to(factual)


def distance(kind: NodeKind, a: Tensor, b: Tensor) -> Tensor:
    """Per-sample distance: L1 on the 0..255 scale for images, absolute error for continuous, 0/1 otherwise."""
    if kind.is_image:
        return ((a.float() - b.float()).abs() * 127.5).flatten(1).mean(1)
    if kind.name == "categorical":
        return (a.argmax(1) != b.argmax(1)).float()
    return (a.float() - b.float()).abs().flatten(1).mean(1)


def _cycle(scm: SCM, batch: Mapping[str, Tensor], do_fn, n: int) -> dict[str, Tensor]:
    out = dict(batch)
    for _ in range(n):
        out = scm.counterfactual(out, do_fn(out))
    return out


def _accumulate(store: dict[str, list[Tensor]], key: str, value: Tensor) -> None:
    store.setdefault(key, []).append(value.detach().cpu())


def evaluate(cfg: Any) -> str:
    """Evaluate the run in `cfg.run_dir`; write metrics.json, metrics.csv and report.md; return the report dir."""
    cfg = validate(cfg, EvaluateConfig)
    run_dir = Path(cfg.run_dir)
    scm = SCM.load(run_dir)
    device = resolve_device(cfg.accelerator)
    scm = scm.to(device).eval()
    run_cfg = read_yaml(run_dir / "config.yaml")
    ds_cfg = run_cfg["dataset"]
    root = cfg.data_root or ds_cfg.get("root", "data")
    dataset = build_dataset(ds_cfg["name"], root, cfg.split, **(ds_cfg.get("options") or {}))
    n = len(dataset) if cfg.num_samples is None else min(cfg.num_samples, len(dataset))
    loader = DataLoader(Subset(dataset, range(n)), batch_size=cfg.batch_size, collate_fn=stack_batch)
    graph: CausalGraph = scm.graph
    pool = {v: torch.stack([dataset[i][v] for i in range(n)]) for v in graph.nodes if not graph.kinds[v].is_image}
    gen = torch.Generator().manual_seed(cfg.seed)
    wanted = set(cfg.metrics)
    targets = [v for v in graph.nodes if not graph.kinds[v].is_image]
    store: dict[str, list[Tensor]] = {}
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        factual = {v: batch[v] for v in graph.nodes}
        if "composition" in wanted:
            for k in cfg.cycles:
                out = _cycle(scm, factual, lambda b: {}, k) if k else factual
                for v in graph.nodes:
                    _accumulate(store, f"composition/{v}/{k}", distance(graph.kinds[v], out[v], factual[v]))
        for t in targets:
            kind = graph.kinds[t]
            value = draw_intervention(kind, factual[t], pool[t], gen)
            cf = scm.counterfactual(factual, {t: value})
            if "truth" in wanted and dataset.has_ground_truth:
                truth = dataset.true_counterfactual(batch["_index"].cpu(), {t: value.cpu()})
                if truth is not None:
                    for v in graph.nodes:
                        _accumulate(store, f"truth/do({t})/{v}", distance(graph.kinds[v], cf[v], truth[v].to(device)))
            if "reversibility" in wanted:
                for k in cfg.cycles:
                    out = factual
                    for _ in range(k):
                        out = scm.counterfactual(scm.counterfactual(out, {t: value}), {t: factual[t]})
                    for v in graph.nodes:
                        _accumulate(
                            store, f"reversibility/do({t})/{v}/{k}", distance(graph.kinds[v], out[v], factual[v])
                        )
    metrics = {}
    for key, parts in store.items():
        x = torch.cat(parts).float()
        metrics[key] = {"mean": x.mean().item(), "std": x.std().item() if x.numel() > 1 else 0.0, "n": x.numel()}
    report_dir = Path(cfg.report_dir or Path("reports") / run_dir.name)
    meta = {
        "run_dir": str(run_dir),
        "dataset": ds_cfg["name"],
        "split": cfg.split,
        "num_samples": n,
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_report(report_dir, metrics, meta)
    print(f"[imcf] evaluation report: {report_dir.resolve() / 'report.md'}")
    return str(report_dir)
