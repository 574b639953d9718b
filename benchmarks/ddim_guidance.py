"""DDIM counterfactuals under classifier-free guidance: a sweep over the guidance scale w, what it guides
from (the factual parents or the null condition), which parents' change it amplifies, and the number of DDIM
steps, on the default experiment.

Stage 1: `python train.py mechanism/image=ddim run_dir=<runs>/ddim evaluate_after=false` (the default embedded
Morpho-MNIST experiment with the DDIM image mechanism, its own budget). Stage 2, for each setting:
`python evaluate.py metrics/protocol=benchmark num_samples=N compute=[effectiveness,measured,composition,realism]
cycles=[1] threads=1 +inference.image.guidance_scale=w +inference.image.guidance_from=... ` on that run. The
digit is read by the evaluator's seed-0 classifier (the DDIM trains against no classifier); thickness and
intensity by the predictor-free morphometrics. The weights are the same for every setting: guidance and steps
are inference options. A setting whose report exists is not evaluated again.

    python benchmarks/ddim_guidance.py [--runs runs] [--reports reports] [--num-samples 500]
        [--steps 10 25 50] [--scales 1 2 3 5 digit=2,thickness=1.25] [--bases factual null]
        [--parents discrete all] [train overrides]

A scale `p=w,q=v` is one guidance scale per parent (factual base, guidance_parents all).

Prints the table and writes benchmarks/results/ddim_guidance.json. When CUDA is present every setting is also
evaluated on the GPU (rows marked cuda).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from intervention_quality import run  # benchmarks/ is on sys.path when a script runs
from machine import write_json

ROOT = Path(__file__).resolve().parents[1]

#: (column, metrics.json key)
COLUMNS = [
    ("do(digit) acc", "effectiveness/do(digit)/digit:acc"),
    ("do(t) thickness MAE", "measured/do(thickness)/thickness:mae"),
    ("do(i) intensity MAE", "measured/do(intensity)/intensity:mae"),
    ("do(digit) FID", "realism/do(digit)/image:fid"),
    ("recon. FID", "realism/null x1/image:fid"),
    ("null x1 L1", "composition/null x1/image:l1"),
]


def scale(text: str) -> float | dict[str, float]:
    """`2` -> 2.0; `digit=2,thickness=1.25` -> one scale per parent."""
    if "=" not in text:
        return float(text)
    return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(","))}


def scale_label(w: float | dict[str, float]) -> str:
    return "-".join(f"{p}{v:g}" for p, v in w.items()) if isinstance(w, dict) else f"{w:g}"


def settings(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (device, steps, base, parents, w) to evaluate; w = 1 once per step count (base and parents do not
    matter there); the null base guides every parent."""
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    out = []
    for device in devices:
        for steps in args.steps:
            for w in args.scales:
                if isinstance(w, dict):  # a scale per parent: the factual base, every parent guided
                    out.append({"device": device, "steps": steps, "base": "factual", "parents": "all", "w": w})
                    continue
                for base in args.bases if w != 1 else args.bases[:1]:
                    for parents in args.parents if w != 1 and base == "factual" else ["all"]:
                        out.append({"device": device, "steps": steps, "base": base, "parents": parents, "w": w})
    return out


def override(w: float | dict[str, float]) -> str:
    """A Hydra value for the scale: a number or {p:w,...}."""
    return "{" + ",".join(f"{p}:{v}" for p, v in w.items()) + "}" if isinstance(w, dict) else str(w)


def evaluate(run_dir: Path, report: Path, s: dict[str, Any], num_samples: int) -> dict[str, Any]:
    """The evaluation of one setting (cached): its metrics, counterfactuals/s and CPU cost."""
    cost = None
    if not (report / "metrics.json").is_file():
        cost = run(
            "evaluate.py",
            [f"run_dir={run_dir}", f"report_dir={report}", "metrics/protocol=benchmark",
             f"num_samples={num_samples}", "compute=[effectiveness,measured,composition,realism]", "cycles=[1]",
             "progress=false", "predictors.max_epochs=10", "threads=1",
             f"accelerator={'gpu' if s['device'] == 'cuda' else 'cpu'}",
             f"+inference.image.num_inference_steps={s['steps']}",
             "+inference.image.guidance_scale=" + override(s["w"]),
             f"+inference.image.guidance_from={s['base']}", f"+inference.image.guidance_parents={s['parents']}"],
        )  # fmt: skip
    data = json.loads((report / "metrics.json").read_text())
    speed = data["meta"]["speed"]["counterfactual"]
    return {"metrics": data["metrics"], "cf_per_s": speed["per_second"], "cost": cost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--scales", type=scale, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    parser.add_argument("--bases", nargs="+", default=["factual", "null"])
    parser.add_argument("--parents", nargs="+", default=["discrete", "all"], help="guidance_parents (factual base)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ddim_guidance.json"))
    args, extra = parser.parse_known_args()
    run_dir = Path(args.runs) / "ddim"
    train_cost = None
    if not (run_dir / "image.ckpt").is_file():
        train_cost = run(
            "train.py",
            ["mechanism/image=ddim", f"run_dir={run_dir}", "evaluate_after=false",
             "trainer.enable_progress_bar=false", *extra],
        )  # fmt: skip
    rows = []
    for s in settings(args):
        name = f"ddim-{s['device']}-s{s['steps']}-w{scale_label(s['w'])}-{s['base']}-{s['parents']}"
        got = evaluate(run_dir, Path(args.reports) / name, s, args.num_samples)
        values = {label: got["metrics"].get(key, {}).get("mean") for label, key in COLUMNS}
        rows.append({**s, **values, "cf_per_s": got["cf_per_s"], "cost": got["cost"]})
    for r in rows:  # speed relative to the unguided sampler at the same steps, same device, same script
        same = [b for b in rows if b["device"] == r["device"] and b["steps"] == r["steps"] and b["w"] == 1]
        r["cf_per_s_vs_w1"] = r["cf_per_s"] / same[0]["cf_per_s"] if same else None
        fid, recon = r["do(digit) FID"], r["recon. FID"]
        r["FID ratio"] = fid / recon if fid is not None and recon else None
    labels = [
        "device",
        "steps",
        "base",
        "parents",
        "w",
        *[c for c, _ in COLUMNS],
        "FID ratio",
        "cf_per_s",
        "cf_per_s_vs_w1",
    ]
    print("| " + " | ".join(labels) + " |")
    print("|" + "---|" * len(labels))
    for r in rows:
        cells = [
            scale_label(r[k]) if k == "w" else f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in labels
        ]
        print("| " + " | ".join(cells) + " |")
    write_json(args.out, {"extra": extra, "train_cost": train_cost}, rows)


if __name__ == "__main__":
    main()
