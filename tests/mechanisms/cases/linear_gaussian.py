import torch

from imcf.graph import CausalGraph
from imcf.mechanisms.linear_gaussian import LinearGaussian
from tests.mechanisms.contract import ContractCase


def _case(node: str) -> ContractCase:
    g = CausalGraph.from_dict(
        {"a": "continuous", "d": "categorical(3)", "b": {"kind": "continuous", "parents": ["a", "d"]}}
    )
    torch.manual_seed(0)
    mech = LinearGaussian.from_graph(g, node, weights={"a": 0.5, "d": [1.0, -1.0, 0.0]} if node == "b" else None)
    parents = {"a": torch.randn(8, 1), "d": torch.nn.functional.one_hot(torch.arange(8) % 3, 3).float()}
    parents = {p: parents[p] for p in g.parents(node)}
    return ContractCase(f"linear_gaussian[{node}]", g, node, mech, torch.randn(8, 1), parents)


CASES = [lambda: _case("b"), lambda: _case("a")]
