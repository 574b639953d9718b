"""Contract cases for the discrete family: binary and categorical nodes, Gumbel-max and threshold modes."""

import torch
import torch.nn.functional as F

from imcf.graph import CausalGraph
from imcf.mechanisms.discrete import DiscreteMechanism
from tests.mechanisms.contract import ContractCase

GRAPH = CausalGraph.from_dict(
    {
        "age": "continuous",
        "male": "binary",
        "colour": "categorical(4)",
        "beard": {"kind": "binary", "parents": ["age", "male"]},
        "style": {"kind": "categorical(5)", "parents": ["age", "colour"]},
    }
)


def _batch(n: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "age": 40 + 10 * torch.randn(n, 1, generator=g),
        "male": torch.randint(0, 2, (n, 1), generator=g).float(),
        "colour": F.one_hot(torch.randint(0, 4, (n,), generator=g), 4).float(),
        "beard": torch.randint(0, 2, (n, 1), generator=g).float(),
        "style": F.one_hot(torch.randint(0, 5, (n,), generator=g), 5).float(),
    }


def _case(node: str, **config) -> ContractCase:
    """A mechanism with random (strongly non-uniform) logits, checked on observed values it finds unlikely."""
    torch.manual_seed(0)
    mech = DiscreteMechanism.from_graph(GRAPH, node, **config)
    with torch.no_grad():
        for p in mech.parameters():
            p.mul_(3.0)
    batch = _batch()
    parents = {p: batch[p] for p in GRAPH.parents(node)}
    return ContractCase(f"discrete[{node},{config.get('mode', 'gumbel')}]", GRAPH, node, mech, batch[node], parents)


CASES = [
    lambda: _case("beard"),
    lambda: _case("style"),
    lambda: _case("beard", mode="threshold", seed=3),
    lambda: _case("style", mode="threshold"),
    lambda: _case("male", seed=1),
    lambda: _case("colour", mode="threshold", num_layers=0),
]
