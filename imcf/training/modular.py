"""Modular training plan: one training unit per c-component (Modular-DCM)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from imcf.config import ConfigError
from imcf.graph import CausalGraph
from imcf.scm import unit_name


@dataclass(frozen=True)
class Unit:
    """A c-component trained on its own: its nodes, the parents it reads, and whether it is skipped."""

    name: str
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]  # parents of the unit's nodes that lie outside the unit
    pretrained: bool = False

    @property
    def confounded(self) -> bool:
        return len(self.nodes) > 1


def plan_units(graph: CausalGraph, pretrained: Iterable[str] = (), only: Iterable[str] | None = None) -> list[Unit]:
    """The graph's c-components as units, in topological order.

    `pretrained` nodes are loaded frozen: a unit made only of them is marked `pretrained` (skipped);
    a unit that mixes pretrained and trainable nodes is an error (a confounded unit trains jointly).
    `only` keeps the units with those names (or containing those nodes); unknown names are an error.
    """
    pretrained = set(pretrained)
    units = []
    for comp in graph.c_components():
        inputs = sorted({p for n in comp for p in graph.parents(n)} - set(comp), key=graph.nodes.index)
        frozen = [n for n in comp if n in pretrained]
        if frozen and len(frozen) != len(comp):
            raise ValueError(
                f"unit {unit_name(comp)!r} is a confounded c-component: make all of {list(comp)} "
                f"pretrained or none (pretrained: {frozen})"
            )
        units.append(Unit(unit_name(comp), comp, tuple(inputs), pretrained=bool(frozen)))
    if only is not None:
        only = list(only)
        keep = []
        for u in units:
            if u.name in only or any(n in only for n in u.nodes):
                keep.append(u)
        known = {u.name for u in units} | set(graph.nodes)
        unknown = [o for o in only if o not in known]
        if unknown:
            raise ConfigError(f"units={unknown} unknown; units of this graph: {[u.name for u in units]}")
        units = keep
    return units


def unit_of(units: Mapping[str, Unit] | list[Unit], node: str) -> Unit:
    """The unit holding `node`."""
    values = units.values() if isinstance(units, Mapping) else units
    return next(u for u in values if node in u.nodes)
