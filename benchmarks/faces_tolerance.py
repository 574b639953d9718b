"""How much of the factual a faces model keeps, per `abduction.withheld_residual_tolerance`, judged against the
true counterfactual face only (no classifier): the same trained weights answer do(a = 1 - a) for every attribute
on the first N faces of a split (test by default) under each tolerance.

    python benchmarks/faces_tolerance.py RUN_DIR [--num-samples 256] [--split test] [--tolerances none 0.05 0.1 0.2 0.4]

Prints per tolerance and intervention: PSNR and MAE (0..255) against the true counterfactual, and the share of the
true change realised, <x' - x, t - x> / |t - x|^2 per face (1: all of it, 0: the factual returned); writes
benchmarks/results/faces_tolerance.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from machine import write_json  # benchmarks/ is on sys.path when a script runs

from imcf.data.faces import ATTRIBUTES, FacesDataset
from imcf.evaluation import load_run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="faces to answer")
    parser.add_argument("--tolerances", nargs="+", default=["none", "0.05", "0.1", "0.2", "0.4"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faces_tolerance.json"))
    args = parser.parse_args()
    scm, cfg = load_run(args.run_dir)
    n = args.num_samples
    ds = FacesDataset(cfg["dataset"].get("root") or "data", args.split)
    items = [ds[i] for i in range(n)]
    nodes = [a for a in ATTRIBUTES if a in scm.graph.nodes]
    factual = {k: torch.stack([it[k] for it in items]) for k in [*nodes, "image"]}
    x = factual["image"]
    truth = {a: ds.true_counterfactual(torch.arange(n), {a: 1 - factual[a]})["image"] for a in nodes}
    rows = []
    for tol in args.tolerances:
        t = None if tol.lower() in ("none", "null") else float(tol)
        scm.set_inference_options("image", {"abduction": {"withheld_residual_tolerance": t}})
        scm.eval()
        start = time.process_time()
        with torch.no_grad():
            for a in nodes:
                cf = scm.counterfactual(factual, {a: 1 - factual[a]})["image"]
                mse = ((cf - truth[a]) ** 2).mean((1, 2, 3))
                d, dt = (cf - x).flatten(1), (truth[a] - x).flatten(1)
                rows.append({
                    "tolerance": t, "do": a,
                    "psnr": float((10 * torch.log10(4.0 / mse)).mean()),
                    "mae": float((cf - truth[a]).abs().mean() * 127.5),
                    "share": float(((d * dt).sum(1) / (dt * dt).sum(1).clamp(min=1e-6)).mean()),
                })  # fmt: skip
        cpu = time.process_time() - start
        line = " ".join(f"{r['do']} {r['psnr']:.1f}/{r['mae']:.1f}/{r['share']:.2f}" for r in rows[-len(nodes) :])
        print(f"tolerance {t}: (PSNR dB / MAE / share) {line}  [{cpu:.0f} CPU-s]", flush=True)
    write_json(args.out, {"run_dir": args.run_dir, "num_samples": n}, rows)


if __name__ == "__main__":
    main()
