"""Counterfactual fine-tuning on the default experiment: the evaluator's numbers before and after.

Stage 1 is `python train.py` (default Morpho-MNIST experiment, conditional VAE or `--family hvae`); stage 2
(`experiment=morphomnist_cft init_from=<stage 1>`) fine-tunes its image unit with the constrained objective of
Ribeiro et al. 2023 against predictors of seed 1; both runs are then scored by the
evaluator (quick protocol, its own seed-0 predictors). A stage whose report already exists is not run again.

    python benchmarks/counterfactual_finetune.py [--family vae|hvae] [--runs runs] [--epochs 10] [overrides ...]

Runs are runs/mm-<family> and runs/mm-<family>-cft. Prints a table and writes
benchmarks/results/counterfactual_finetune[_<family>].json (no suffix for the VAE).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROWS = [  # (label, metrics.json key)
    ("do(digit): digit accuracy", "effectiveness/do(digit)/digit:acc"),
    ("do(thickness): thickness MAE (predictor)", "effectiveness/do(thickness)/thickness:mae"),
    ("do(thickness): thickness MAE (morphometrics)", "measured/do(thickness)/thickness:mae"),
    ("do(thickness): digit kept", "effectiveness/do(thickness)/digit:acc"),
    ("do(intensity): intensity MAE (predictor)", "effectiveness/do(intensity)/intensity:mae"),
    ("do(digit): thickness MAE (morphometrics)", "measured/do(digit)/thickness:mae"),
    ("do(thickness): true-counterfactual PSNR (dB)", "truth/do(thickness)/image:psnr"),
    ("do(thickness): true-counterfactual MAE (0..255)", "truth/do(thickness)/image:mae"),
    ("composition null x10: image L1", "composition/null x10/image:l1"),
    ("reversibility do(digit) x1: image L1", "reversibility/do(digit) x1/image:l1"),
    ("realism do(digit): FID (predictor features)", "realism/do(digit)/image:fid"),
    ("minimality do(digit): CLD", "minimality/do(digit)/image:cld"),
]


def run(args: list[str]) -> float:
    """Run train.py with `args`; returns wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, check=True)
    return time.perf_counter() - start


def metrics(report: Path) -> dict[str, Any]:
    return json.loads((report / "metrics.json").read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs of the image unit")
    parser.add_argument("--family", default="vae", choices=["vae", "hvae"])
    parser.add_argument("--out", default=None)
    args, extra = parser.parse_known_args()
    suffix = "" if args.family == "vae" else f"_{args.family}"
    out_path = args.out or str(ROOT / "benchmarks" / "results" / f"counterfactual_finetune{suffix}.json")
    common = ["trainer.enable_progress_bar=false", "evaluate.progress=false", f"mechanism/image={args.family}", *extra]
    base, tuned = Path(args.runs) / f"mm-{args.family}", Path(args.runs) / f"mm-{args.family}-cft"
    stages = {
        "before": (base, [f"run_dir={base}", f"evaluate.report_dir={Path(args.reports) / base.name}"]),
        "after": (
            tuned,
            [  # the stage-2 preset (units=[image], counterfactual_finetune.enabled) with this script's epochs
                "experiment=morphomnist_cft",
                f"run_dir={tuned}",
                f"evaluate.report_dir={Path(args.reports) / tuned.name}",
                f"init_from={base}",
                f"unit_overrides.image.trainer.max_epochs={args.epochs}",
            ],
        ),
    }
    seconds = {}
    for name, (run_dir, overrides) in stages.items():
        report = Path(args.reports) / run_dir.name
        if not (report / "metrics.json").is_file():
            seconds[name] = run([*overrides, *common])
    got = {name: metrics(Path(args.reports) / run_dir.name) for name, (run_dir, _) in stages.items()}
    lines = ["| | before (stage 1) | after fine-tuning |", "|---|---|---|"]
    table = {}
    for label, key in ROWS:
        b, a = (got[s].get(key, {}).get("mean") for s in ("before", "after"))
        table[label] = {"before": b, "after": a, "key": key}
        lines.append(f"| {label} | {b:.4g} | {a:.4g} |" if b is not None and a is not None else f"| {label} | - | - |")
    print("\n".join(lines))
    out = {
        "meta": {
            "date": time.strftime("%Y-%m-%d"),
            "family": args.family,
            "epochs": args.epochs,
            "extra": extra,
            "seconds": seconds,
        },
        "results": table,
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
