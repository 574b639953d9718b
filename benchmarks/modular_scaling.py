"""Modular (per c-component) vs joint training on random graphs with hidden confounders.

The scalability study of Modular-DCM (Rahman et al.): random DAGs of 10-50 continuous nodes with bidirected
edges, data from a random true SCM; for each graph, the largest jointly trained unit and the time of one
training epoch, modular (one unit at a time, the way `train.py` runs them) vs every node in one optimisation.
The step is the one `UnitModule` runs inside Lightning (`_losses` + Adam), timed without Lightning's overhead.

    python benchmarks/modular_scaling.py [--nodes 10 20 30 50] [--family flow] [--samples 4000]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch

from imcf.graph import CausalGraph
from imcf.scm import SCM
from imcf.training.modular import plan_units
from imcf.training.module import UnitModule


def random_graph(n: int, seed: int, degree: float = 2.0, confounders: float = 0.2) -> CausalGraph:
    """Random DAG (expected in-degree `degree`) with round(confounders * n) bidirected edges."""
    rng = random.Random(seed)
    names = [f"v{i:02d}" for i in range(n)]
    p = min(1.0, degree / max(1, (n - 1) / 2))
    nodes = {
        v: {"kind": "continuous", "parents": [u for u in names[:i] if rng.random() < p / 2]}
        for i, v in enumerate(names)
    }
    pairs = set()
    while len(pairs) < round(confounders * n):
        a, b = sorted(rng.sample(names, 2))
        pairs.add((a, b))
    return CausalGraph.from_dict({"name": f"random{n}", "nodes": nodes, "confounded": [list(p) for p in pairs]})


def build(graph: CausalGraph, family: str, seed: int) -> SCM:
    torch.manual_seed(seed)
    specs = {v: {"family": family, "config": {}} for v in graph.nodes}
    specs["_components"] = {"*": {"mode": "autoregressive"}}
    return SCM.build(graph, specs)


def true_data(graph: CausalGraph, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Samples of a random linear-Gaussian SCM with the same graph (confounders as shared noise)."""
    scm = build(graph, "linear_gaussian", seed)
    with torch.no_grad():
        for m in scm.mechanisms.values():
            m.weight.normal_(0, 0.5)
    return scm.sample(n)


def units_of(scm: SCM) -> list[UnitModule]:
    out = []
    for unit in plan_units(scm.graph):
        comp = scm.components[unit.name] if unit.name in scm.components else None
        module = UnitModule({v: scm.mechanisms[v] for v in unit.nodes}, component=comp)
        module.log = lambda *a, **k: None  # timed outside a Trainer
        out.append(module)
    return out


def epoch_time(modules: list[UnitModule], data: dict[str, torch.Tensor], batch: int, joint: bool) -> float:
    """Seconds for one epoch: modular = each unit over the data in turn; joint = one pass, summed loss."""
    n = next(iter(data.values())).shape[0]
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    groups = [modules] if joint else [[m] for m in modules]
    # one warm-up step per group (first-batch initialisation, allocator)
    for group in groups:
        sum(m._losses({k: v[:batch] for k, v in data.items()}, "train") for m in group).backward()
    start = time.perf_counter()
    for group in groups:
        perm = torch.randperm(n)
        for i in range(0, n, batch):
            b = {k: v[perm[i : i + batch]] for k, v in data.items()}
            loss = sum(m._losses(b, "train") for m in group)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[10, 20, 30, 50])
    ap.add_argument("--family", default="flow")
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/modular_scaling.json")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for n in args.nodes:
        graph = random_graph(n, args.seed)
        data = true_data(graph, args.samples, args.seed)
        comps = graph.c_components()
        modular = epoch_time(units_of(build(graph, args.family, args.seed)), data, args.batch, joint=False)
        joint = epoch_time(units_of(build(graph, args.family, args.seed)), data, args.batch, joint=True)
        rows.append(
            {
                "nodes": n,
                "edges": sum(len(graph.parents(v)) for v in graph.nodes),
                "bidirected": len(graph.confounded),
                "units": len(comps),
                "largest_unit": max(len(c) for c in comps),
                "modular_epoch_s": modular,
                # the wall time a cluster needs when every unit is its own job: the slowest unit
                "modular_max_unit_epoch_s": max(
                    epoch_time([m], data, args.batch, joint=False)
                    for m in units_of(build(graph, args.family, args.seed))
                ),
                "joint_epoch_s": joint,
            }
        )
    print(f"modular vs joint training, family={args.family}, {args.samples} samples, batch {args.batch}")
    print(
        f"{'nodes':>5} {'edges':>5} {'bidir':>5} {'units':>5} {'largest':>7} "
        f"{'modular s':>10} {'max unit s':>10} {'joint s':>8}"
    )
    for r in rows:
        print(
            f"{r['nodes']:>5} {r['edges']:>5} {r['bidirected']:>5} {r['units']:>5} {r['largest_unit']:>7} "
            f"{r['modular_epoch_s']:>10.2f} {r['modular_max_unit_epoch_s']:>10.2f} {r['joint_epoch_s']:>8.2f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "family": args.family,
        "samples": args.samples,
        "batch": args.batch,
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
