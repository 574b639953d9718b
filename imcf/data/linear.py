"""A linear-Gaussian SCM as a dataset: known mechanisms, stored noise, closed-form true counterfactuals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from imcf.data.base import SPLITS, CausalDataset, split_size, whole_option
from imcf.graph import CausalGraph
from imcf.mechanisms.linear_gaussian import LinearGaussian
from imcf.registry import DATASETS

#: the default 4-node SCM: fork x1 -> (x2, x3), chains x1 -> x2 -> x4 and x1 -> x3 -> x4, collider at x4
DEFAULT_GRAPH = {
    "name": "linear4",
    "nodes": {
        "x1": {"kind": "continuous", "parents": []},
        "x2": {"kind": "continuous", "parents": ["x1"]},
        "x3": {"kind": "continuous", "parents": ["x1"]},
        "x4": {"kind": "continuous", "parents": ["x2", "x3"]},
    },
}
DEFAULT_MECHANISMS = {
    "x1": {"bias": 1.0, "sigma": 1.0},
    "x2": {"weights": {"x1": 0.8}, "bias": -0.5, "sigma": 0.5},
    "x3": {"weights": {"x1": -1.2}, "bias": 0.3, "sigma": 0.7},
    "x4": {"weights": {"x2": 0.6, "x3": 0.4}, "bias": 0.0, "sigma": 0.3},
}


def true_linear_scm(graph: Mapping[str, Any], mechanisms: Mapping[str, Any]):
    """The ground-truth SCM with fixed (non-learnable) linear-Gaussian mechanisms."""
    from imcf.scm import SCM

    g = CausalGraph.from_dict(graph)
    mechs = {n: LinearGaussian.from_graph(g, n, learnable=False, **dict(mechanisms.get(n, {}))) for n in g.nodes}
    return SCM(g, mechs)


@DATASETS.register("linear_gaussian")
class LinearGaussianDataset(CausalDataset):
    """Samples of a known linear-Gaussian SCM; each split drawn with its own seed from `seed`."""

    default_graph = "linear4"
    has_ground_truth = True

    def __init__(
        self,
        root: str = "data",
        split: str = "train",
        graph: Mapping[str, Any] | None = None,
        mechanisms: Mapping[str, Any] | None = None,
        sizes: Mapping[str, int] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(root, split)
        self.scm = true_linear_scm(graph or DEFAULT_GRAPH, mechanisms or DEFAULT_MECHANISMS)
        sizes = dict(sizes or {"train": 4000, "val": 500, "test": 1000})
        n = split_size("linear_gaussian", sizes, split)
        seed = int(whole_option("linear_gaussian", "seed", seed))
        gen = torch.Generator().manual_seed(seed * 1000 + SPLITS.index(split))
        self.noise = {v: torch.randn(n, 1, generator=gen) for v in self.scm.graph.nodes}
        self.values = self._render(self.noise, {})

    @torch.no_grad()
    def _render(self, noise: Mapping[str, Tensor], do: Mapping[str, Any]) -> dict[str, Tensor]:
        from imcf.scm import as_value

        out: dict[str, Tensor] = {}
        n = next(iter(noise.values())).shape[0]
        for v in self.scm.graph.topological_order:
            mech = self.scm.mechanisms[v]
            if v in do:
                out[v] = as_value(mech.kind, do[v], n, torch.device("cpu"), v)
            else:
                out[v] = mech.predict(noise[v], {p: out[p] for p in mech.parents})
        return out

    def __len__(self) -> int:
        return next(iter(self.values.values())).shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {v: x[i] for v, x in self.values.items()}
        item.update({f"_u_{v}": u[i] for v, u in self.noise.items()})
        item["_index"] = torch.tensor(i)
        return item

    def true_counterfactual(self, index: Tensor, do: Mapping[str, Any]) -> dict[str, Tensor]:
        """Re-render rows `index` with their own noise under `do`."""
        index = torch.as_tensor(index).long().cpu()
        return self._render({v: u[index] for v, u in self.noise.items()}, do)
