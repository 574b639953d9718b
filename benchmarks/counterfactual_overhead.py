"""What a counterfactual costs beyond the image mechanism: `SCM.counterfactual` against the bare image abduct +
predict of the same batch (the image under its factual and its counterfactual parents), on the default model
(experiment=morphomnist, fresh weights: untrained weights cost the same as trained ones), batch `--batch`.

Per query, the two timings alternate over `--repeats` rounds and medians are reported, in CPU time of this process
(other jobs on the machine disturb it less than wall time); the ratio is the counterfactual's overhead.

    python benchmarks/counterfactual_overhead.py [--batch 256] [--repeats 10] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import statistics

import torch
from validation_overhead import (  # benchmarks/ is on sys.path when a script runs
    cpu_seconds,
    machine_info,
    setup,
    write_results,
)


def main() -> None:
    args, scm, sync, factual, queries = setup(__doc__.splitlines()[0])
    b = args.batch
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

    machine = machine_info(args.device)
    print(f"default model, batch {b}, {args.repeats} repeats, {args.threads} thread(s); {machine['cpu']}")
    print(f"{'query':15s} {'counterfactual':>15s} {'image abduct+predict':>21s} {'ratio':>6s} {'CF / CPU-s':>11s}")
    for r in rows:
        print(
            f"{r['query']:15s} {r['counterfactual_ms']:12.1f} ms {r['image_abduct_predict_ms']:18.1f} ms "
            f"{r['ratio']:6.2f} {r['counterfactuals_per_cpu_s']:11.0f}"
        )
    write_results("counterfactual_overhead", args, machine, rows)


if __name__ == "__main__":
    main()
