"""The faces benchmark: each image family trained on the embedded synthetic faces, simple and complex graph,
evaluated with the published benchmark protocol, in the layout of the published CelebA table.

For each graph (`faces_simple`: smiling, eyeglasses -> image; `faces`: young, male -> beard, bald; all six ->
image) and family: `python train.py experiment=<graph> mechanism/image=<family> run_dir=<runs>/faces-<graph>-
<family> evaluate_after=false` (the experiment's own budget), then `python evaluate.py metrics/protocol=benchmark
num_samples=N` on that run (every metric; the attributes are read by the evaluator's seed-0 classifiers, which no
model trains against). A run whose image.ckpt exists is not trained again; a report that exists is not
recomputed.

    python benchmarks/faces.py [--graphs faces_simple faces] [--families hvae vae gan] [--num-samples 1000]
        [--runs runs] [--reports reports] [--eval KEY=VALUE ...] [--tag NAME] [--finetune] [train overrides]

`--finetune` adds stage 2, counterfactual fine-tuning (`experiment=faces_cft init_from=<stage 1>`, into
`<runs>/faces-<graph>-<family>-cft`), and evaluates that run instead (rows' family `<family>-cft`).

`--eval` passes overrides to evaluate.py only (e.g. `+inference.image.abduction.withheld_residual_tolerance=0.1`
answers the queries of the same trained weights another way); `--tag` names such an evaluation (its report is
`<reports>/faces-<graph>-<family>-<tag>`, its rows' family `<family>-<tag>`).

Prints per graph: F1 of every attribute under every intervention (rows: do(attribute), family; columns: the
attributes), beside the published CelebA F1 of the intervened attribute (different data: real photos); then
composition, reversibility, realism, minimality and the error against the true counterfactual. Writes
benchmarks/results/faces.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from intervention_quality import run  # benchmarks/ is on sys.path when a script runs
from machine import write_json

from imcf.data.faces import _CHILD_PROB, FacesDataset, child_probability, derive_attributes

ROOT = Path(__file__).resolve().parents[1]

#: published CelebA F1 of the intervened attribute (Melistas et al. 2024; shared/PROTOCOL.md), per family
PUBLISHED = {
    "smiling": {"vae": 0.897, "hvae": 0.998, "gan": 0.819},
    "eyeglasses": {"vae": 0.810, "hvae": 0.981, "gan": 0.891},
    "young": {"vae": 0.35, "hvae": 0.654, "gan": 0.413},
    "bald": {"vae": 0.412, "hvae": 0.611, "gan": 0.492},
}

#: attributes of each graph, in the published table's order
ATTRIBUTES = {
    "faces_simple": ["smiling", "eyeglasses"],
    "faces": ["young", "male", "beard", "bald", "smiling", "eyeglasses"],
}

#: the graph config of each experiment
GRAPH = {"faces_simple": "faces_simple", "faces": "faces_complex"}

#: (column, metrics.json key with {a} the intervened attribute), one row per intervention
QUALITY = [
    ("comp. x1 L1", "composition/null x1/image:l1"),
    ("comp. x10 L1", "composition/null x10/image:l1"),
    ("rev. x1 L1", "reversibility/do({a}) x1/image:l1"),
    ("rev. x10 L1", "reversibility/do({a}) x10/image:l1"),
    ("FID", "realism/do({a})/image:fid"),
    ("KID", "realism/do({a})/image:kid"),
    ("CLD", "minimality/do({a})/image:cld"),
    ("true MAE", "truth/do({a})/image:mae"),
    ("true PSNR", "truth/do({a})/image:psnr"),
    ("true SSIM", "truth/do({a})/image:ssim"),
]


def mean(metrics: dict[str, Any], key: str) -> float | None:
    got = metrics.get(key)
    return None if got is None else got["mean"]


def agreement_ceiling(ds: FacesDataset, n: int, intervened: str, child: str) -> float:
    """The expected agreement of a child's counterfactual with the true one for a model that knows the SCM's
    tables exactly but not the row's u: abduction can only place u in the interval its factual value allows, so
    the counterfactual child is a draw, agreeing with the truth with probability p^2 + (1 - p)^2 (p: the chance
    that the drawn u gives 1). do flips the intervened attribute of the first n test rows, as the evaluator does."""
    u = {a: v[:n] for a, v in ds.u.items()}
    fact = derive_attributes(u)
    cf = derive_attributes(u, {intervened: 1 - fact[intervened]})
    p = child_probability(child, fact["young"], fact["male"])  # P(child = 1), factual
    q = child_probability(child, cf["young"], cf["male"])  # and counterfactual
    lo, hi = np.where(fact[child] == 1, 0.0, p), np.where(fact[child] == 1, p, 1.0)  # u's interval
    p1 = np.clip(np.minimum(hi, q) - lo, 0, None) / np.maximum(hi - lo, 1e-12)
    return float(np.mean(p1**2 + (1 - p1) ** 2))


def rows_for(graph: str, family: str, metrics: dict[str, Any], name: str = "") -> list[dict[str, Any]]:
    """One row per intervention: F1 of every attribute, the quality columns, and the agreement of every
    attribute with the true counterfactual's (1 - its error; descendants must follow the SCM). `name` names
    the rows' evaluation (default: the family)."""
    attrs, out = ATTRIBUTES[graph], []
    for a in attrs:
        row: dict[str, Any] = {"graph": graph, "family": name or family, "do": a}
        for b in attrs:
            row[f"F1 {b}"] = mean(metrics, f"effectiveness/do({a})/{b}:f1")
            err = mean(metrics, f"truth/do({a})/{b}:error")
            row[f"agree {b}"] = None if err is None else 1 - err
        kept = [row[f"F1 {b}"] for b in attrs if b != a and row[f"F1 {b}"] is not None]
        row["min F1 others"] = min(kept) if kept else None
        row["published F1"] = PUBLISHED.get(a, {}).get(family)
        for label, key in QUALITY:
            row[label] = mean(metrics, key.format(a=a))
        out.append(row)
    return out


def table(rows: list[dict[str, Any]], labels: list[str]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(labels) + " |", "|" + "---|" * len(labels)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in labels) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", nargs="+", default=["faces_simple", "faces"], choices=sorted(ATTRIBUTES))
    parser.add_argument("--families", nargs="+", default=["hvae", "vae", "gan"])
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--data-root", default="data", help="where the faces cache is (train.py's data_root)")
    parser.add_argument("--eval", nargs="*", default=[], help="overrides for evaluate.py only")
    parser.add_argument("--tag", default="", help="names the evaluation (report directory and family label)")
    parser.add_argument("--finetune", action="store_true", help="add stage 2: experiment=faces_cft")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faces.json"))
    args, extra = parser.parse_known_args()
    rows, cost = [], {}
    for graph in args.graphs:
        for fam in args.families:
            name = f"faces-{graph}-{fam}"
            label = "-".join([fam] + ["cft"] * args.finetune + [args.tag] * bool(args.tag))
            run_dir, report = Path(args.runs) / name, Path(args.reports) / f"faces-{graph}-{label}"
            cost[report.name] = {}
            common = [f"mechanism/image={fam}", "evaluate_after=false", "trainer.enable_progress_bar=false", *extra]
            if not (run_dir / "image.ckpt").is_file():
                cost[report.name]["train"] = run("train.py", [f"experiment={graph}", f"run_dir={run_dir}", *common])
            if args.finetune:
                stage1, run_dir = run_dir, Path(args.runs) / f"{name}-cft"
                if not (run_dir / "image.ckpt").is_file():
                    cost[report.name]["finetune"] = run(
                        "train.py",
                        ["experiment=faces_cft", f"graph={GRAPH[graph]}", f"init_from={stage1}", f"run_dir={run_dir}",
                         *common],
                    )  # fmt: skip
            if not (report / "metrics.json").is_file():
                cost[report.name]["evaluate"] = run(
                    "evaluate.py",
                    [f"run_dir={run_dir}", f"report_dir={report}", "metrics/protocol=benchmark",
                     f"num_samples={args.num_samples}", "progress=false", *args.eval],
                )  # fmt: skip
            metrics = json.loads((report / "metrics.json").read_text())["metrics"]
            rows += rows_for(graph, fam, metrics, label)
    ceiling = {}
    if "faces" in args.graphs:
        test = FacesDataset(args.data_root, "test")
        ceiling = {f"do({a}) {c}": agreement_ceiling(test, args.num_samples, a, c)
                   for a in ("young", "male") for c in _CHILD_PROB}  # fmt: skip
        print("\nagreement ceiling of a sampler with the exact tables:", {k: round(v, 3) for k, v in ceiling.items()})
    for graph in args.graphs:
        attrs = ATTRIBUTES[graph]
        mine = [r for r in rows if r["graph"] == graph]
        print(f"\n## {graph}: F1 of each attribute on the counterfactuals (published: CelebA, intervened attribute)")
        print(table(mine, ["do", "family", *[f"F1 {b}" for b in attrs], "published F1", "min F1 others"]))
        print(f"\n## {graph}: agreement with the true counterfactual's attributes")
        print(table(mine, ["do", "family", *[f"agree {b}" for b in attrs]]))
        print(f"\n## {graph}: composition, reversibility, realism, minimality, true counterfactual")
        print(table(mine, ["do", "family", *[label for label, _ in QUALITY]]))
    meta = {
        "extra": extra,
        "eval": args.eval,
        "tag": args.tag,
        "finetune": args.finetune,
        "num_samples": args.num_samples,
        "cost": cost,
        "agreement_ceiling": ceiling,
    }
    write_json(args.out, meta, rows)


if __name__ == "__main__":
    main()
