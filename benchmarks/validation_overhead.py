"""What checking a counterfactual query's inputs costs: `SCM.counterfactual` with and without the factual-batch
checks (finite, float, per-node shape, one batch length), on the default model (experiment=morphomnist, built
fresh: untrained weights cost the same as trained ones), a batch of `--batch` samples.

Three timings per intervention, interleaved over `--repeats` rounds, medians reported (CPU time of this process,
so other jobs on the machine disturb it less than wall time):
  counterfactual        the code as shipped, checks included
  without checks        `SCM._check_factual` replaced by a stub that only reads the batch size
  checks alone          `SCM._check_factual` on the nodes the query reads, timed by itself (the robust number:
                        the difference of the first two is at the level of timing noise)
The do() value checks (numeric, finite) run on one value per node and stay in both timings.

    python benchmarks/validation_overhead.py [--batch 256] [--repeats 10] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from machine import cpu_model  # benchmarks/ is on sys.path when a script runs

from imcf.scm import SCM
from imcf.training.run import build_scm

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def default_scm(device: str, overrides: list[str] | None = None) -> SCM:
    """The default experiment's SCM (with train.py `overrides`, e.g. mechanism/image=hvae) with fresh weights, in
    eval mode."""
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides or []))
    scm, _ = build_scm(cfg)
    return scm.to(device).eval()


def cpu_seconds(fn, sync) -> float:
    t = time.process_time()
    fn()
    sync()
    return time.process_time() - t


def needed_nodes(scm: SCM, do: dict) -> set[str]:
    """The nodes whose factual values the query reads (what counterfactual checks)."""
    affected = scm.graph.descendants(do.keys()) - set(do)
    needed = {n for n in scm.graph.nodes if n not in do and n not in affected}
    for n in affected:
        needed |= {n, *scm.graph.parents(n)}
    return needed


def setup(description: str) -> tuple[argparse.Namespace, SCM, Any, dict, dict]:
    """Shared by the query benchmarks: arguments (--batch, --repeats, --threads, --device, --tag and train.py
    overrides of the model, e.g. mechanism/image=hvae), the default SCM, a device sync, a factual batch
    `scm.sample(batch)` and the three queries."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("overrides", nargs="*", help="train.py overrides of the model (default: the default experiment)")
    ap.add_argument("--tag", default="", help="suffix of the results JSON's name (e.g. hvae)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    scm = default_scm(args.device, args.overrides)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    b = args.batch
    with torch.no_grad():
        factual = scm.sample(b)
    queries = {
        "do(thickness)": {"thickness": torch.rand(b, 1, device=args.device) * 4 + 1},
        "do(intensity)": {"intensity": torch.rand(b, 1, device=args.device) * 150 + 80},
        "do(digit)": {"digit": torch.randint(0, 10, (b,), device=args.device)},
    }
    return args, scm, sync, factual, queries


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, CPU count, device name and torch version, for a benchmark's JSON."""
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
    }


def write_results(name: str, args: argparse.Namespace, machine: dict[str, Any], rows: list[dict]) -> None:
    """benchmarks/results/<name>[_<tag>][_gpu].json with the arguments, the machine and the rows."""
    tag = f"_{args.tag}" if args.tag else ""
    dest = Path(__file__).parent / "results" / f"{name}{tag}{'' if args.device == 'cpu' else '_gpu'}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({**vars(args), "machine": machine, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {dest}")


def main() -> None:
    args, scm, sync, factual, queries = setup(__doc__.splitlines()[0])
    checked = SCM._check_factual

    def unchecked(self, factual, nodes):  # the batch size, nothing else
        return int(factual[next(iter(nodes))].shape[0])

    rows = []
    for name, do in queries.items():
        scm.counterfactual(factual, do)  # warm-up (and the identifiability verdict, cached)
        nodes = needed_nodes(scm, do)
        query, checks = partial(scm.counterfactual, factual, do), partial(scm._check_factual, factual, nodes)
        with_checks, without, alone = [], [], []
        for r in range(args.repeats):
            for checks_on in (True, False) if r % 2 == 0 else (False, True):  # alternate which goes first
                SCM._check_factual = checked if checks_on else unchecked
                try:
                    (with_checks if checks_on else without).append(cpu_seconds(query, sync))
                finally:
                    SCM._check_factual = checked
            alone.append(cpu_seconds(lambda: [checks() for _ in range(10)], sync) / 10)  # noqa: B023
        row = {
            "query": name,
            "counterfactual_ms": 1e3 * statistics.median(with_checks),
            "without_checks_ms": 1e3 * statistics.median(without),
            "checks_alone_ms": 1e3 * statistics.median(alone),
        }
        row["checks_share"] = row["checks_alone_ms"] / row["counterfactual_ms"]
        row["difference_share"] = (row["counterfactual_ms"] - row["without_checks_ms"]) / row["counterfactual_ms"]
        rows.append(row)

    machine = machine_info(args.device)
    b = args.batch
    print(
        f"default model, batch {b}, {args.repeats} repeats, {args.threads} thread(s); {machine['cpu']} ({args.device})"
    )
    print(f"{'query':15s} {'counterfactual':>15s} {'without checks':>15s} {'difference':>11s} {'checks alone':>13s}")
    for r in rows:
        print(
            f"{r['query']:15s} {r['counterfactual_ms']:12.2f} ms {r['without_checks_ms']:12.2f} ms "
            f"{100 * r['difference_share']:10.2f}% {r['checks_alone_ms']:10.3f} ms = {100 * r['checks_share']:.2f}%"
        )
    write_results("validation_overhead", args, machine, rows)


if __name__ == "__main__":
    main()
