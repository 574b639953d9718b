"""The shared mechanism contract case type."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from imcf.graph import CausalGraph
from imcf.mechanisms.base import Mechanism


@dataclass
class ContractCase:
    """A mechanism built from `graph` for `node`, with a factual batch to check it on.

    `recon_tol` is the largest allowed max-abs error of predict(abduct(x, pa), pa) vs x
    (1e-4 for exact families); a string instead says why the round trip is not checked for this case.
    """

    name: str
    graph: CausalGraph
    node: str
    mechanism: Mechanism
    x: Tensor
    parents: dict[str, Tensor] = field(default_factory=dict)
    recon_tol: float | str = 1e-4
