"""Reports: metrics.json, metrics.csv, one Markdown table per metric, image grids and effectiveness plots."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from imcf.io import atomic_write_text

#: what each metric measures and which way is better, printed above its table
DESCRIPTIONS = {
    "effectiveness": "Predictors read each attribute off the counterfactual image vs the value it should have "
    "(MAE in original units, lower is better; accuracy / F1, higher is better).",
    "measured": "Predictor-free effectiveness: attributes measured directly on the counterfactual image "
    "(morphometrics) vs the value it should have (MAE, lower is better).",
    "composition": "Null intervention applied k times vs the factual: image L1 on 0..255, predictor-feature L1 "
    "(and LPIPS); lower is better, 0 is perfect.",
    "reversibility": "do(a') then back to do(a), k round trips, vs the factual; lower is better, 0 is perfect.",
    "realism": "FID / KID between real images and counterfactuals in the named feature space; "
    "lower is better. The `factual` row is the real test images themselves: the floor.",
    "minimality": "Counterfactual latent divergence (CLD, lower is better, in [0, 1]) and the mean latent KL "
    "between the factual's and the counterfactual's VAE posteriors.",
    "truth": "Model counterfactual vs the dataset's true counterfactual: image MAE (0..255, lower), PSNR "
    "(dB, higher), SSIM (higher); attribute error (lower).",
}


def _fmt(v: dict[str, Any]) -> str:
    mean, std = v.get("mean"), v.get("std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def tables(metrics: dict[str, dict[str, Any]]) -> dict[str, str]:
    """One Markdown table per metric. Keys are `<metric>/<row>/<column>`: rows are interventions (or cycle
    counts), columns `<node>:<measure>`."""
    grouped: dict[str, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for key, v in metrics.items():
        parts = key.split("/")
        metric, row, col = parts[0], parts[1] if len(parts) > 1 else "", "/".join(parts[2:]) or "value"
        grouped[metric][row][col] = _fmt(v)
    out = {}
    for metric, rows in grouped.items():
        cols: list[str] = []
        for r in rows.values():
            cols += [c for c in r if c not in cols]
        lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for row, vals in rows.items():
            lines.append(f"| {row} | " + " | ".join(vals.get(c, "") for c in cols) + " |")
        out[metric] = "\n".join(lines) + "\n"
    return out


def predictor_table(quality: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown table of the predictors' own scores on real test images, poor ones flagged."""
    lines = ["| image | attribute | kind | n | MAE | MAE/std | accuracy | F1 | verdict |", "|---" * 9 + "|"]
    for image, attrs in quality.items():
        for attr, q in attrs.items():
            g = {k: f"{q[k]:.4g}" if k in q else "" for k in ("mae", "nmae", "acc", "f1")}
            verdict = f"**POOR**: {q['reason']}" if q.get("poor") else "ok"
            lines.append(
                f"| {image} | {attr} | {q['kind']} | {q['n']} | {g['mae']} | {g['nmae']} | {g['acc']} | {g['f1']} "
                f"| {verdict} |"
            )
    return "\n".join(lines) + "\n"


def markdown(metrics: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The whole report: header, predictor quality, one section per metric, notes, grids and plots."""
    out = [
        f"# Evaluation of `{meta.get('run_dir', '?')}`",
        "",
        f"Dataset `{meta.get('dataset', '?')}`, split `{meta.get('split', '?')}`, {meta.get('num_samples', '?')} "
        f"samples, seed {meta.get('seed', '?')}, protocol `{meta.get('protocol', '?')}`. Mean ± std over samples.",
        "",
    ]
    quality = meta.get("predictors") or {}
    if quality:
        out += ["## Predictors (scored on real test images)", "", predictor_table(quality)]
        poor = [f"{i}/{a}" for i, attrs in quality.items() for a, q in attrs.items() if q.get("poor")]
        if poor:
            out += [
                f"> **Warning**: predictor(s) {poor} are poor on real images; effectiveness numbers that rely on "
                "them are not meaningful.",
                "",
            ]
    for metric, table in tables(metrics).items():
        out += [f"## {metric}", "", DESCRIPTIONS.get(metric, ""), "", table]
    if meta.get("identifiability"):
        out += [
            "## Identifiability (imcf.identify)",
            "",
            "| query | verdict | rests on | warning |",
            "|---|---|---|---|",
        ]
        for query, v in meta["identifiability"].items():
            rests = ", ".join(sorted(v.get("assumptions") or {})) or "-"
            out.append(f"| {query} | {v.get('status')} | {rests} | {v.get('warning') or ''} |")
        out += ["", "Estimands and the assumption of each node are in metrics.json (`meta.identifiability`).", ""]
    notes = meta.get("notes") or []
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    for title, key in (("Image grids", "grids"), ("Effectiveness plots", "plots")):
        files = meta.get(key) or []
        if files:
            out += [f"## {title}", ""] + [f"![{Path(f).stem}]({f})" for f in files] + [""]
    return "\n".join(out)


def write_report(report_dir: str | Path, metrics: dict[str, dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write metrics.json (with `meta`), metrics.csv, report.md and tables/<metric>.md under `report_dir`.

    Metric keys look like `<metric>/<row>/<column>`, e.g. `truth/do(x1)/x4:error`.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    clean = {k: {f: _finite(x) for f, x in v.items()} for k, v in metrics.items()}
    atomic_write_text(report_dir / "metrics.json", json.dumps({"meta": meta, "metrics": clean}, indent=2))
    lines = ["metric,row,column,mean,std,n"]
    for k, v in clean.items():
        metric, row, col = (k.split("/", 2) + ["", ""])[:3]
        mean = "" if v.get("mean") is None else f"{v['mean']:.6g}"
        std = "" if v.get("std") is None else f"{v['std']:.6g}"
        lines.append(f'{metric},"{row}","{col}",{mean},{std},{v.get("n", "")}')
    atomic_write_text(report_dir / "metrics.csv", "\n".join(lines) + "\n")
    (report_dir / "tables").mkdir(exist_ok=True)
    for metric, table in tables(clean).items():
        text = f"# {metric}\n\n{DESCRIPTIONS.get(metric, '')}\n\n{table}"
        atomic_write_text(report_dir / "tables" / f"{metric}.md", text)
    atomic_write_text(report_dir / "report.md", markdown(clean, meta))
    return report_dir


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def image_grid(path: str | Path, columns: Sequence[tuple[str, Tensor]], title: str = "") -> Tensor:
    """Save a labelled grid (one column per (title, images (B, C, H, W) in [-1, 1])) as PNG; return it as CHW."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(c[1].shape[0] for c in columns)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.2 * len(columns), 1.2 * rows + 0.4), squeeze=False)
    for j, (name, images) in enumerate(columns):
        for i in range(rows):
            img = ((images[i].detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
            ax = axes[i][j]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    fig.canvas.draw()
    rgba = torch.from_numpy(np.asarray(fig.canvas.buffer_rgba()).copy())
    plt.close(fig)
    return rgba[..., :3].permute(2, 0, 1).float() / 255.0


def effectiveness_plot(path: str | Path, title: str, intended: Tensor, read: Tensor, discrete: bool) -> Path:
    """Scatter of the value read off the counterfactual against the intended value (continuous), or accuracy
    per intended class (discrete)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.5, 3.2))
    x, y = intended.float().reshape(-1).cpu(), read.float().reshape(-1).cpu()
    if discrete:
        classes = sorted(set(x.long().tolist()))
        acc = [(y[x.long() == c] == c).float().mean().item() for c in classes]
        ax.bar([str(c) for c in classes], acc)
        ax.set_ylim(0, 1)
        ax.set_xlabel("intervened class")
        ax.set_ylabel("accuracy read off the counterfactual")
    else:
        ax.scatter(x, y, s=3, alpha=0.5)
        lo, hi = min(x.min().item(), y.min().item()), max(x.max().item(), y.max().item())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel("intervened value")
        ax.set_ylabel("value read off the counterfactual")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def log_report(
    logger_cfg: Any,
    report_dir: Path,
    run_dir: str,
    results: dict[str, dict[str, Any]],
    grids: dict[str, Tensor],
    plots: list[str],
    config: dict[str, Any],
) -> None:
    """Send the metrics (scalars and, for wandb, a table), grids and plots to the loggers `logger_cfg` names: under
    the training run's logs (run_dir/logs, in the run's wandb group, a run named `evaluate`) when `run_dir` is a
    trained run, else under report_dir/logs."""
    from PIL import Image

    from imcf.training.loggers import build_loggers, finish_loggers, log_images, log_metrics, wandb_ids

    run = Path(run_dir)
    trained_here = (run / "config.yaml").is_file()
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
    finish_loggers(loggers, config, flat)
