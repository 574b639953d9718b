"""Reports: metrics.json, metrics.csv and a Markdown table per metric."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from imcf.io import atomic_write_text


def write_report(report_dir: str | Path, metrics: dict[str, dict[str, float]], meta: dict[str, Any]) -> Path:
    """Write metrics.json (with `meta`), metrics.csv and report.md under `report_dir`.

    Metric keys look like `<metric>/<row>/<column>[/<cycles>]`, e.g. `truth/do(x1)/x4`.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report_dir / "metrics.json", json.dumps({"meta": meta, "metrics": metrics}, indent=2))
    lines = ["metric,mean,std,n"] + [f"{k},{v['mean']:.6g},{v['std']:.6g},{v['n']}" for k, v in metrics.items()]
    atomic_write_text(report_dir / "metrics.csv", "\n".join(lines) + "\n")
    atomic_write_text(report_dir / "report.md", markdown(metrics, meta))
    return report_dir


def markdown(metrics: dict[str, dict[str, float]], meta: dict[str, Any]) -> str:
    """One Markdown table per metric: rows are interventions (or nodes), columns the rest of the key."""
    tables: dict[str, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for key, v in metrics.items():
        parts = key.split("/")
        metric, row, col = parts[0], parts[1] if len(parts) > 1 else "", "/".join(parts[2:]) or "value"
        tables[metric][row][col] = f"{v['mean']:.4g} ± {v['std']:.2g}"
    out = [
        f"# Evaluation of `{meta.get('run_dir', '?')}`",
        "",
        f"Dataset `{meta.get('dataset', '?')}`, split `{meta.get('split', '?')}`, "
        f"{meta.get('num_samples', '?')} samples, seed {meta.get('seed', '?')}. Mean ± std over samples.",
        "",
    ]
    for metric, rows in tables.items():
        cols = sorted({c for r in rows.values() for c in r})
        out += [f"## {metric}", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for row, vals in rows.items():
            out.append(f"| {row} | " + " | ".join(vals.get(c, "") for c in cols) + " |")
        out.append("")
    return "\n".join(out)
