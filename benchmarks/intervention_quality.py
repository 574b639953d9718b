"""Do counterfactuals obey the intervention? The issue-16 table for the image families on the default
experiment, evaluated with the benchmark protocol on 500 test digits.

For each family: `python train.py mechanism/image=<family> run_dir=<runs>/iq-<family> evaluate_after=false`
(the default embedded Morpho-MNIST experiment, its own budget and stages), then
`python evaluate.py metrics/protocol=benchmark num_samples=500 (all 500 measured)
predictors.max_epochs=10` (the default experiment's predictor budget) on that run. Thickness
and intensity are measured with the predictor-free morphometrics (`imcf.data.morphomnist.measure_batch`); the
digit is read by the evaluator's seed-0 classifier, which no model here is trained or fine-tuned against
(fine-tuning, where a preset enables it, uses seed 1). A stage whose output exists is not run again.

    python benchmarks/intervention_quality.py [--families vae hvae gan] [--seeds 0 1 2 ...] [--runs runs]
        [--reports reports] [--num-samples 500] [--finetune EPOCHS] [overrides ...] [--eval evaluate.py overrides ...]

`--seeds S ...` trains and evaluates each family once per seed (`<runs>/iq-<family>-seed<S>`, train.py's `seed=S`;
the evaluator's judges keep their own seed 0) and prints each seed's value and how many seeds meet the target (a
model that meets a row on one training of six is not one a user can count on: the realism ratio spreads by 3x
between seeds; docs/results.md); the JSON then holds one value per seed. Without it, one training
(`<runs>/iq-<family>`).

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


#: the realism target's row: do(digit)'s FID over the same model's do(thickness) FID (computed, not a metric key)
RATIO = "realism/do(digit)/image:fid / realism/do(thickness)/image:fid"


def T(vae: float | None, hvae: float | None, gan: float | None) -> dict[str, float | None]:  # noqa: N802
    """The issue's targets per family (None: report only)."""
    return {"vae": vae, "hvae": hvae, "gan": gan}


#: (label, metrics.json key, targets per family (None: report only), "<=" or ">=")
ROWS: list[tuple[str, str, dict[str, float | None], str]] = [
    ("do(digit): digit accuracy", "effectiveness/do(digit)/digit:acc", T(0.95, 0.95, 0.9), ">="),
    ("do(digit): FID (predictor features)", "realism/do(digit)/image:fid", {}, "<="),
    ("do(thickness): FID (predictor features)", "realism/do(thickness)/image:fid", {}, "<="),
    ("do(digit) FID / do(thickness) FID", RATIO, T(2, 2, 2), "<="),
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


def value_of(metrics: dict[str, Any], key: str) -> float | None:
    """A row's value in one report's metrics (the realism ratio computed from its two FIDs)."""
    if key == RATIO:
        num, den = (metrics.get(k, {}).get("mean") for k in key.split(" / "))
        return None if num is None or not den else num / den
    return metrics.get(key, {}).get("mean")


def fmt(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3g}"  # PSNR 33.97 is not "34"


def verdict(value: float | None, target: float | None, sense: str) -> str:
    if value is None:
        return "-"
    if target is None:
        return fmt(value)
    return f"{fmt(value)} ({'ok' if meets(value, target, sense) else 'MISS'} {sense} {target:g})"


def meets(value: float, target: float, sense: str) -> bool:
    return value >= target if sense == ">=" else value <= target


def seeds_verdict(values: list[float | None], target: float | None, sense: str) -> str:
    """Several trainings of one family: each seed's value, then how many seeds meet the target."""
    shown = " / ".join("-" if v is None else fmt(v) for v in values)
    if target is None:
        return shown
    ok = sum(v is not None and meets(v, target, sense) for v in values)
    return f"{shown} ({ok}/{len(values)} {sense} {target:g})"


def measure(fam: str, run_dir: Path, report: Path, extra: list[str], args: argparse.Namespace) -> tuple[dict, dict]:
    """Train (unless `run_dir/image.ckpt` exists), fine-tune where asked, and evaluate (unless the report exists)
    one family; returns (metrics, cost)."""
    cost: dict[str, dict[str, float]] = {}
    if not (run_dir / "image.ckpt").is_file():
        cost["train"] = run(
            "train.py",
            [f"mechanism/image={fam}", f"run_dir={run_dir}", "evaluate_after=false",
             "trainer.enable_progress_bar=false", *extra],
        )  # fmt: skip
    if args.finetune:
        stage1, run_dir = run_dir, run_dir.with_name(run_dir.name + "-cft")
        report = report.with_name(report.name + "-cft")
        if not (run_dir / "image.ckpt").is_file():
            cost["finetune"] = run(
                "train.py",
                ["experiment=morphomnist_cft", f"mechanism/image={fam}", f"init_from={stage1}",
                 f"run_dir={run_dir}", f"unit_overrides.image.trainer.max_epochs={args.finetune}",
                 "evaluate_after=false", "trainer.enable_progress_bar=false", *extra],
            )  # fmt: skip
    if not (report / "metrics.json").is_file():
        cost["evaluate"] = run(
            "evaluate.py",
            [f"run_dir={run_dir}", f"report_dir={report}", "metrics/protocol=benchmark",
             f"num_samples={args.num_samples}", "progress=false",
             "predictors.max_epochs=10", *args.eval],
        )  # fmt: skip
    return json.loads((report / "metrics.json").read_text())["metrics"], cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["vae", "hvae", "gan"])
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="train each family once per seed")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--finetune", type=int, default=0, help="epochs of counterfactual fine-tuning (0: none)")
    parser.add_argument("--eval", nargs="*", default=[], help="overrides for evaluate.py only (after the others)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "intervention_quality.json"))
    args, extra = parser.parse_known_args()
    if args.seeds is not None and any(a.startswith(("seed=", "++seed=")) for a in extra):
        parser.error("give the seeds with --seeds or one seed=... override, not both")
    seeds: list[int | None] = list(args.seeds) if args.seeds is not None else [None]
    got: dict[str, list[dict[str, Any]]] = {}
    cost: dict[str, Any] = {}
    for fam in args.families:
        got[fam] = []
        for seed in seeds:
            name = f"iq-{fam}" if seed is None else f"iq-{fam}-seed{seed}"
            more = [] if seed is None else [f"seed={seed}"]
            metrics, spent = measure(fam, Path(args.runs) / name, Path(args.reports) / name, [*extra, *more], args)
            got[fam].append(metrics)
            if seed is None:
                cost[fam] = spent
            else:
                cost.setdefault(fam, {})[f"seed{seed}"] = spent
    fams = args.families
    suffix = "+cft" if args.finetune else ""
    lines = ["| | " + " | ".join(f + suffix for f in fams) + " |", "|---|" + "---|" * len(fams)]
    if args.seeds is not None:
        lines.insert(0, f"seeds {' / '.join(map(str, args.seeds))}")
    table: dict[str, dict[str, Any]] = {}
    for label, key, targets, sense in ROWS:
        per_seed = {f: [value_of(m, key) for m in got[f]] for f in fams}
        if args.seeds is None:
            vals: dict[str, Any] = {f: per_seed[f][0] for f in fams}
            cells = [verdict(vals[f], targets.get(f), sense) for f in fams]
        else:
            vals = per_seed
            cells = [seeds_verdict(per_seed[f], targets.get(f), sense) for f in fams]
        table[label] = {"key": key, "values": vals, "targets": {f: targets.get(f) for f in fams}, "sense": sense}
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    write_json(args.out, {"extra": extra, "eval": args.eval, "seeds": args.seeds, "cost": cost}, table)


if __name__ == "__main__":
    main()
