"""Contract cases for the conditional normalizing flow family (spline and affine, every support kind)."""

import torch

from imcf.graph import CausalGraph
from imcf.mechanisms.flow import FlowMechanism
from tests.mechanisms.contract import ContractCase

GRAPH = CausalGraph.from_dict(
    {
        "thickness": "continuous",
        "digit": "categorical(3)",
        "intensity": {"kind": "continuous", "parents": ["thickness", "digit"]},
        "score": {"kind": "continuous", "parents": ["thickness"]},
    }
)


def _batch(n: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    thickness = 0.5 + torch.distributions.Gamma(10.0, 5.0).sample((n, 1))
    u = torch.randn(n, 1, generator=g)
    return {
        "thickness": thickness,
        "digit": torch.nn.functional.one_hot(torch.arange(n) % 3, 3).float(),
        "intensity": 64 + 191 * torch.sigmoid(0.5 * u + 2 * thickness - 5),
        "score": 3 * thickness + u,
    }


def _case(node: str, **config) -> ContractCase:
    """A flow with its standardisation set from the batch and randomly perturbed (non-identity) weights."""
    torch.manual_seed(0)
    mech = FlowMechanism.from_graph(GRAPH, node, **config)
    batch = _batch()
    parents = {p: batch[p] for p in GRAPH.parents(node)}
    mech.train()
    mech.loss(batch[node], parents)
    with torch.no_grad():
        for p in mech.parameters():
            p.add_(0.2 * torch.randn_like(p))
    name = f"flow[{node},{config.get('transform', 'spline')},{config.get('support', 'real')}]"
    return ContractCase(name, GRAPH, node, mech, batch[node], parents)


CASES = [
    lambda: _case("thickness", support="positive", lower=0.5),
    lambda: _case("intensity", support="bounded", lower=64.0, upper=255.0),
    lambda: _case("intensity", transform="affine", support="bounded", lower=64.0, upper=255.0),
    lambda: _case("score", transform="affine"),
    lambda: _case("thickness", transform="affine", num_layers=1, support="positive"),
]
