"""Two reference models for testing the evaluator on embedded datasets.

`OracleMechanism` is the true mechanism: abduction recognises which dataset unit a value belongs to (the
factual values, and every value it has rendered, are looked up exactly), prediction re-renders that unit
under the new parents with the dataset's `true_counterfactual`. `IdentityMechanism` returns its input
unchanged whatever the parents: perfect composition, no effect of any intervention.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import Tensor

from imcf.data.base import CausalDataset
from imcf.graph import CausalGraph
from imcf.mechanisms.base import Mechanism
from imcf.scm import SCM


def _key(x: Tensor) -> str:
    return hashlib.sha1(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


class OracleMechanism(Mechanism):
    """The dataset's own mechanism of `node`; noise is the dataset row of the unit."""

    exact_abduction = True

    def __init__(self, node, kind, parent_kinds, dataset: CausalDataset) -> None:
        super().__init__(node, kind, parent_kinds)
        self.dataset = dataset
        self.factual = torch.stack([dataset[i][node] for i in range(len(dataset))])
        self.table = {_key(v): i for i, v in enumerate(self.factual)}

    def abduct(self, x: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        self.parent_vector(parents, x.shape[0])
        try:
            return torch.tensor([self.table[_key(v)] for v in x], device=x.device)
        except KeyError:
            raise KeyError(f"oracle for {self.node!r}: a value that no unit of the dataset has") from None

    def predict(self, noise: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        index = noise.long().cpu()
        do = {p: v.cpu() for p, v in parents.items()}
        factual = {p: torch.stack([self.dataset[int(i)][p] for i in index]) for p in parents}
        do = {
            p: v for p, v in do.items() if self.parent_kinds[p].name == "continuous" or not torch.equal(v, factual[p])
        }
        true = self.dataset.true_counterfactual(index, do)
        out = self.factual[index] if true is None else true[self.node].float()
        for i, v in zip(index.tolist(), out):
            self.table.setdefault(_key(v), i)
        return out.to(self.device)

    def sample_noise(self, n: int) -> Tensor:
        return torch.randint(0, len(self.dataset), (n,))

    def loss(self, x: Tensor, parents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"loss": torch.zeros(())}


class IdentityMechanism(Mechanism):
    """Returns the factual value unchanged, ignoring the parents."""

    exact_abduction = True

    def abduct(self, x: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        return x

    def predict(self, noise: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        return noise

    def sample_noise(self, n: int) -> Tensor:
        raise NotImplementedError("the identity model has no noise distribution")

    def loss(self, x: Tensor, parents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"loss": torch.zeros(())}


def oracle_scm(graph: CausalGraph, dataset: CausalDataset) -> SCM:
    """The true SCM of an embedded dataset, as an SCM the evaluator can score."""
    return SCM(
        graph,
        {
            n: OracleMechanism(n, graph.kinds[n], {p: graph.kinds[p] for p in graph.parents(n)}, dataset)
            for n in graph.nodes
        },
    )


def identity_scm(graph: CausalGraph) -> SCM:
    """A model whose counterfactuals copy the factual (except the intervened nodes)."""
    return SCM(
        graph,
        {n: IdentityMechanism(n, graph.kinds[n], {p: graph.kinds[p] for p in graph.parents(n)}) for n in graph.nodes},
    )
