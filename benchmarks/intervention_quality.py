"""Do counterfactuals obey the intervention? The issue-16 table for the image families on the default
experiment, evaluated with the benchmark protocol on 500 test digits.

For each family: `python train.py mechanism/image=<family> run_dir=<runs>/iq-<family> evaluate_after=false`
(the default embedded Morpho-MNIST experiment, its own budget and stages), then
`python evaluate.py metrics/protocol=benchmark num_samples=500 (all 500 measured)
predictors.max_epochs=10` (the default experiment's predictor budget) on that run. Thickness
and intensity are measured with the predictor-free morphometrics (`imcf.data.morphomnist.measure_batch`); the
digit is read by the evaluator's seed-0 classifier, which no model here is trained or fine-tuned against
(fine-tuning, where a preset enables it, uses seed 1). A stage whose output exists is not run again.

    python benchmarks/intervention_quality.py [--families vae hvae gan] [--runs runs] [--reports reports]
        [--num-samples 500] [--finetune EPOCHS] [overrides ...] [--eval evaluate.py overrides ...]

`--finetune N` adds the counterfactual fine-tuning stage (`experiment=morphomnist_cft`, N epochs, predictors of
seed 1, the output gain left as the likelihood fitted it) to each family's run (`<runs>/iq-<family>-cft`) and
evaluates that instead (column `<family>+cft`).

`--eval` passes overrides to evaluate.py alone (e.g. `+inference.image.abduction.withheld_latent_scale=...` to ask
trained weights under other abduction options; a run whose image.ckpt exists is not trained again).

Prints the table with the issue's targets and writes benchmarks/results/intervention_quality.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from machine import write_json  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]


def T(vae: float | None, hvae: float | None, gan: float | None) -> dict[str, float | None]:  # noqa: N802
    """The issue's targets per family (None: report only)."""
    return {"vae": vae, "hvae": hvae, "gan": gan}


#: (label, metrics.json key, targets per family (None: report only), "<=" or ">=")
ROWS: list[tuple[str, str, dict[str, float | None], str]] = [
    ("do(digit): digit accuracy", "effectiveness/do(digit)/digit:acc", T(0.95, 0.95, 0.9), ">="),
    ("do(digit): FID (predictor features)", "realism/do(digit)/image:fid", {}, "<="),
    ("do(thickness): FID (predictor features)", "realism/do(thickness)/image:fid", {}, "<="),
    ("do(digit): thickness drift (morph.)", "measured/do(digit)/thickness:mae", T(0.25, 0.25, 0.3), "<="),
    ("do(intensity): intensity MAE (morph.)", "measured/do(intensity)/intensity:mae", T(3, 3, 5), "<="),
    ("do(intensity): thickness drift (morph.)", "measured/do(intensity)/thickness:mae", T(0.15, 0.15, 0.2), "<="),
    ("do(thickness): thickness MAE (morph.)", "measured/do(thickness)/thickness:mae", T(0.12, 0.12, 0.2), "<="),
    ("do(thickness): true-CF PSNR (dB)", "truth/do(thickness)/image:psnr", T(34, 34, None), ">="),
    ("do(intensity): intensity MAE (predictor)", "effectiveness/do(intensity)/intensity:mae", {}, "<="),
    ("composition null x10: image L1 (0..255)", "composition/null x10/image:l1", {}, "<="),
    ("reversibility do(thickness) x1: image L1", "reversibility/do(thickness) x1/image:l1", {}, "<="),
    ("reversibility do(digit) x1: image L1", "reversibility/do(digit) x1/image:l1", {}, "<="),
]  # fmt: skip


def run(script: str, args: list[str]) -> dict[str, float]:
    """Run a repo script; returns its wall and CPU seconds (children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(cpu, 1)}


def verdict(value: float | None, target: float | None, sense: str) -> str:
    if value is None:
        return "-"
    if target is None:
        return f"{value:.3g}"
    ok = value >= target if sense == ">=" else value <= target
    return f"{value:.3g} ({'ok' if ok else 'MISS'} {sense} {target:g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["vae", "hvae", "gan"])
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--finetune", type=int, default=0, help="epochs of counterfactual fine-tuning (0: none)")
    parser.add_argument("--eval", nargs="*", default=[], help="overrides for evaluate.py only (after the others)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "intervention_quality.json"))
    args, extra = parser.parse_known_args()
    got: dict[str, dict[str, Any]] = {}
    cost: dict[str, dict[str, dict[str, float]]] = {}
    for fam in args.families:
        run_dir, report = Path(args.runs) / f"iq-{fam}", Path(args.reports) / f"iq-{fam}"
        cost[fam] = {}
        if not (run_dir / "image.ckpt").is_file():
            cost[fam]["train"] = run(
                "train.py",
                [f"mechanism/image={fam}", f"run_dir={run_dir}", "evaluate_after=false",
                 "trainer.enable_progress_bar=false", *extra],
            )  # fmt: skip
        if args.finetune:
            stage1, run_dir = run_dir, Path(args.runs) / f"iq-{fam}-cft"
            report = Path(args.reports) / f"iq-{fam}-cft"
            if not (run_dir / "image.ckpt").is_file():
                cost[fam]["finetune"] = run(
                    "train.py",
                    ["experiment=morphomnist_cft", f"mechanism/image={fam}", f"init_from={stage1}",
                     f"run_dir={run_dir}", f"unit_overrides.image.trainer.max_epochs={args.finetune}",
                     "evaluate_after=false", "trainer.enable_progress_bar=false", *extra],
                )  # fmt: skip
        if not (report / "metrics.json").is_file():
            cost[fam]["evaluate"] = run(
                "evaluate.py",
                [f"run_dir={run_dir}", f"report_dir={report}", "metrics/protocol=benchmark",
                 f"num_samples={args.num_samples}", "progress=false",
                 "predictors.max_epochs=10", *args.eval],
            )  # fmt: skip
        got[fam] = json.loads((report / "metrics.json").read_text())["metrics"]
    fams = args.families
    suffix = "+cft" if args.finetune else ""
    lines = ["| | " + " | ".join(f + suffix for f in fams) + " |", "|---|" + "---|" * len(fams)]
    table: dict[str, dict[str, Any]] = {}
    for label, key, targets, sense in ROWS:
        vals = {f: got[f].get(key, {}).get("mean") for f in fams}
        table[label] = {"key": key, "values": vals, "targets": {f: targets.get(f) for f in fams}, "sense": sense}
        lines.append(f"| {label} | " + " | ".join(verdict(vals[f], targets.get(f), sense) for f in fams) + " |")
    print("\n".join(lines))
    write_json(args.out, {"extra": extra, "eval": args.eval, "cost": cost}, table)


if __name__ == "__main__":
    main()
