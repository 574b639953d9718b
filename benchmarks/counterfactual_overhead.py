"""What a counterfactual costs beyond the image mechanism: `SCM.counterfactual` against the bare image abduct +
predict of the same batch (the image under its factual and its counterfactual parents), on the default model
(experiment=morphomnist, fresh weights: untrained weights cost the same as trained ones), batch `--batch`.

Per query, the two timings alternate over `--repeats` rounds and medians are reported, in CPU time of this process
(other jobs on the machine disturb it less than wall time); the ratio is the counterfactual's overhead.

    python benchmarks/counterfactual_overhead.py [--batch 256] [--repeats 10] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
from machine import cpu_model  # benchmarks/ is on sys.path when a script runs
from validation_overhead import cpu_seconds, default_scm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    scm = default_scm(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    b = args.batch
    with torch.no_grad():
        factual = scm.sample(b)
        queries = {
            "do(thickness)": {"thickness": torch.rand(b, 1, device=args.device) * 4 + 1},
            "do(intensity)": {"intensity": torch.rand(b, 1, device=args.device) * 150 + 80},
            "do(digit)": {"digit": torch.randint(0, 10, (b,), device=args.device)},
        }
    image = scm.mechanisms["image"]
    rows = []
    for name, do in queries.items():
        with torch.no_grad():
            cf = scm.counterfactual(factual, do)  # warm-up; its parents feed the bare timing
        factual_pa = {p: factual[p] for p in image.parents}
        cf_pa = {p: cf[p] for p in image.parents}

        @torch.no_grad()
        def query(do=do):
            scm.counterfactual(factual, do)

        @torch.no_grad()
        def bare(factual_pa=factual_pa, cf_pa=cf_pa):
            image.predict(image.abduct(factual["image"], factual_pa), cf_pa)

        full, alone = [], []
        for r in range(args.repeats):
            for first in (query, bare) if r % 2 == 0 else (bare, query):
                (full if first is query else alone).append(cpu_seconds(first, sync))
        row = {
            "query": name,
            "counterfactual_ms": 1e3 * statistics.median(full),
            "image_abduct_predict_ms": 1e3 * statistics.median(alone),
        }
        row["ratio"] = row["counterfactual_ms"] / row["image_abduct_predict_ms"]
        row["counterfactuals_per_cpu_s"] = b / statistics.median(full)
        rows.append(row)

    machine = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
    }
    print(f"default model, batch {b}, {args.repeats} repeats, {args.threads} thread(s); {machine['cpu']}")
    print(f"{'query':15s} {'counterfactual':>15s} {'image abduct+predict':>21s} {'ratio':>6s} {'CF / CPU-s':>11s}")
    for r in rows:
        print(
            f"{r['query']:15s} {r['counterfactual_ms']:12.1f} ms {r['image_abduct_predict_ms']:18.1f} ms "
            f"{r['ratio']:6.2f} {r['counterfactuals_per_cpu_s']:11.0f}"
        )
    suffix = "" if args.device == "cpu" else "_gpu"
    dest = Path(__file__).parent / "results" / f"counterfactual_overhead{suffix}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({**vars(args), "machine": machine, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {dest}")


if __name__ == "__main__":
    main()
