"""Evaluator speed on CPU: counterfactuals scored per second, per metric.

Two cases: the linear-Gaussian true SCM (attributes only) and an untrained flow / discrete / VAE SCM on a small
embedded Morpho-MNIST (images; the cached predictors and VAE are trained first and not timed). Generating the
counterfactuals is timed separately (`counterfactual`), so the metric rows are the evaluator's own cost.

    python benchmarks/evaluate_speed.py [--samples 256] [--data-root data]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from imcf.data.datamodule import build_dataset
from imcf.evaluation import evaluate_scm
from imcf.graph import CausalGraph
from imcf.scm import SCM

MORPHO_GRAPH = Path(__file__).resolve().parents[1] / "configs" / "graph" / "morphomnist.yaml"  # the shipped graph


def run_case(name: str, scm: SCM, dataset: str, root: str, options: dict, samples: int, out: Path) -> dict:
    cfg = {
        "num_samples": samples,
        "batch_size": 64,
        "accelerator": "cpu",
        "progress": False,
        "logger": {"csv": False},
        "predictors": {"max_epochs": 2},
        "minimality": {"max_epochs": 2},
        "realism": {"max_reference": 1000, "kid_subset_size": 100},
        "measured_max_samples": samples,
    }
    # first call trains / caches the predictors and the VAE; the second is the timed one
    evaluate_scm(scm, dataset, root, options, {**cfg, "num_samples": 8}, out / f"{name}-warmup", run_dir=name)
    t = time.perf_counter()
    report = evaluate_scm(scm, dataset, root, options, cfg, out / name, run_dir=name)
    total = time.perf_counter() - t
    meta = json.loads((Path(report) / "metrics.json").read_text())["meta"]
    return {"case": name, "samples": meta["num_samples"], "total_seconds": total, "speed": meta["speed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(tempfile.mkdtemp(prefix="imcf-evaluate-speed-"))
    results = []
    linear_opts = {"sizes": {"train": 1000, "val": 200, "test": 1000}, "seed": 0}
    data = build_dataset("linear_gaussian", args.data_root, "test", **linear_opts)
    results.append(
        run_case("linear4 (true SCM)", data.scm, "linear_gaussian", args.data_root, linear_opts, args.samples, out)
    )
    morpho_opts = {"num_samples": 1500, "workers": 1}
    graph = CausalGraph.from_yaml(MORPHO_GRAPH)
    specs = {
        "thickness": {"family": "flow"},
        "intensity": {"family": "flow"},
        "digit": {"family": "discrete"},
        "image": {"family": "vae"},
    }
    scm = SCM.build(graph, specs).eval()
    results.append(
        run_case(
            "morphomnist (untrained flow/discrete/vae)",
            scm,
            "morphomnist",
            args.data_root,
            morpho_opts,
            args.samples,
            out,
        )
    )
    print(f"\n{'case':45s} {'metric':15s} {'seconds':>9s} {'scored':>8s} {'per second':>11s}")
    for r in results:
        for metric, s in r["speed"].items():
            ps = f"{s['per_second']:.1f}" if s["per_second"] else "-"
            print(f"{r['case']:45s} {metric:15s} {s['seconds']:9.3f} {s['counterfactuals']:8d} {ps:>11s}")
    dest = Path(__file__).parent / "results" / "evaluate_speed.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"threads": args.threads, "results": results}, indent=2))
    print(f"\nwrote {dest}")


if __name__ == "__main__":
    main()
