"""What a counterfactual costs beyond the image mechanism: `SCM.counterfactual` against the bare image abduct +
predict of the same batch (the image under its factual and its counterfactual parents), on the default model
(experiment=morphomnist, fresh weights: untrained weights cost the same as trained ones), batch `--batch`.

Per query, the two timings alternate over `--repeats` rounds and medians are reported, in CPU time of this process
(other jobs on the machine disturb it less than wall time); the ratio is the counterfactual's overhead.

Another model: train.py overrides, e.g. `mechanism/image=hvae --tag hvae`. Where the image mechanism answers with
answer-time options that cost passes (`abduction.refine`, `abduction.fit`: steps > 0), a third timing is
interleaved: the bare image abduct + predict of the same weights with those steps at 0, and `options_ratio` is the
bare cost with them over the bare cost without them.

    python benchmarks/counterfactual_overhead.py [overrides ...] [--tag T] [--batch 256] [--repeats 10]
        [--threads 1] [--device cpu]
"""

from __future__ import annotations

import copy
import statistics

import torch
from validation_overhead import (  # benchmarks/ is on sys.path when a script runs
    cpu_seconds,
    machine_info,
    setup,
    write_results,
)

#: the image mechanism's answer-time options whose `steps` cost extra passes
ANSWER_OPTIONS = ("refine", "fit")


def main() -> None:
    args, scm, sync, factual, queries = setup(__doc__.splitlines()[0])
    b = args.batch
    image = scm.mechanisms["image"]
    plain = None  # the same weights answering without the answer-time steps
    options = [k for k in ANSWER_OPTIONS if getattr(image, k, {}).get("steps")]
    if options:
        plain_scm = copy.deepcopy(scm)
        plain_scm.set_inference_options("image", {"abduction": {k: {"steps": 0} for k in options}})
        plain = plain_scm.mechanisms["image"]
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

        @torch.no_grad()
        def without(factual_pa=factual_pa, cf_pa=cf_pa):
            plain.predict(plain.abduct(factual["image"], factual_pa), cf_pa)

        timed = {query: [], bare: []} | ({without: []} if plain is not None else {})
        for r in range(args.repeats):
            for fn in list(timed) if r % 2 == 0 else list(timed)[::-1]:
                timed[fn].append(cpu_seconds(fn, sync))
        full, alone = timed[query], timed[bare]
        row = {
            "query": name,
            "counterfactual_ms": 1e3 * statistics.median(full),
            "image_abduct_predict_ms": 1e3 * statistics.median(alone),
        }
        row["ratio"] = row["counterfactual_ms"] / row["image_abduct_predict_ms"]
        row["counterfactuals_per_cpu_s"] = b / statistics.median(full)
        if plain is not None:
            row["image_plain_ms"] = 1e3 * statistics.median(timed[without])
            row["options_ratio"] = row["image_abduct_predict_ms"] / row["image_plain_ms"]
        rows.append(row)

    machine = machine_info(args.device)
    model = " ".join(args.overrides) or "default"
    print(f"model {model}, batch {b}, {args.repeats} repeats, {args.threads} thread(s); {machine['cpu']}")
    if plain is not None:
        print(f"answer-time steps: {', '.join(f'{k} {getattr(image, k)}' for k in options)}; 'without': all at 0")
    extra = f" {'without':>12s} {'options x':>9s}" if plain is not None else ""
    print(
        f"{'query':15s} {'counterfactual':>15s} {'image abduct+predict':>21s} {'ratio':>6s} {'CF / CPU-s':>11s}{extra}"
    )
    for r in rows:
        more = f" {r['image_plain_ms']:9.1f} ms {r['options_ratio']:9.2f}" if plain is not None else ""
        print(
            f"{r['query']:15s} {r['counterfactual_ms']:12.1f} ms {r['image_abduct_predict_ms']:18.1f} ms "
            f"{r['ratio']:6.2f} {r['counterfactuals_per_cpu_s']:11.0f}{more}"
        )
    write_results("counterfactual_overhead", args, machine, rows)


if __name__ == "__main__":
    main()
