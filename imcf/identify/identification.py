"""`identify(graph, query)`: run the algorithm the query needs (ID, IDC, ID*, IDC*) and say what came out.

Statuses: `identified` (an estimand over P(V)), `identified_with_experiments` (a counterfactual that needs
interventional distributions observational data do not give), `rests_on_mechanism` (the node's own noise
must be abducted: the answer rests on the mechanism family's assumption), `not_identified` (hidden
confounding; the path is named).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imcf.graph import CausalGraph
from imcf.identify.counterfactual import CounterfactualFailure, idc_star
from imcf.identify.estimands import Expr, Prob, map_atoms, own_values, substitute, symbols, tidy
from imcf.identify.graphs import GraphView
from imcf.identify.interventional import Hedge, identify_conditional, identify_effect
from imcf.identify.query import Query, QueryError, parse_query

STATUSES = ("identified", "identified_with_experiments", "rests_on_mechanism", "not_identified")


@dataclass
class Identification:
    """The answer for one query: status (one of STATUSES), estimand and, when it fails, why and where."""

    query: str
    kind: str  # interventional | conditional | counterfactual
    algorithm: str  # ID | IDC | ID* | IDC*
    status: str
    estimand: Expr | None = None
    experiments: list[str] = field(default_factory=list)  # P(. | do(.)) terms no observational data gives
    reason: str | None = None
    path: list[str] = field(default_factory=list)  # the confounding (or shared-noise) path
    mechanism_nodes: list[str] = field(default_factory=list)  # whose family assumption the answer rests on

    @property
    def identifiable(self) -> bool:
        return self.status in ("identified", "identified_with_experiments")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "query": self.query,
            "kind": self.kind,
            "algorithm": self.algorithm,
            "status": self.status,
            "identifiable": self.identifiable,
            "estimand": None if self.estimand is None else str(self.estimand),
            "experiments": list(self.experiments),
            "reason": self.reason,
            "path": list(self.path),
            "mechanism_nodes": list(self.mechanism_nodes),
        }


def identify(graph: CausalGraph, query: str | Query) -> Identification:
    """Decide whether `query` is identifiable on `graph` and return its estimand (never raises on failure)."""
    q = parse_query(query, graph) if isinstance(query, str) else query
    for cv, _ in q.outcome + q.given:
        for n in [cv.name, *(v for v, _ in cv.do)]:
            if n not in graph:
                raise QueryError(f"query names unknown node {n!r}; graph {graph.name!r} has {list(graph.nodes)}")
    g = GraphView(graph)
    return _identify_interventional(g, q) if q.interventional else _identify_counterfactual(g, q)


def _identify_interventional(g: GraphView, q: Query) -> Identification:
    y = frozenset(cv.name for cv, _ in q.outcome)
    x = frozenset(v for v, _ in q.do)
    z = frozenset(cv.name for cv, _ in q.given)
    kind, algorithm = ("conditional", "IDC") if z else ("interventional", "ID")
    try:
        est = identify_conditional(y, x, z, g)
    except Hedge as h:
        path = h.graph.bidirected_path(x & h.forest, h.subforest) or h.path()
        return Identification(
            str(q),
            kind,
            algorithm,
            "not_identified",
            reason=(
                f"hedge: the c-component {sorted(h.forest, key=g.order.index)} contains the treatments "
                f"{sorted(h.treatments & h.forest)} and is tied to {sorted(h.subforest, key=g.order.index)} "
                f"by hidden confounding {' <-> '.join(path)}"
            ),
            path=path,
        )
    mapping = {cv.name: s for cv, s in q.outcome + q.given}
    mapping.update(dict(q.do))
    used = set(mapping.values())
    return Identification(str(q), kind, algorithm, "identified", tidy(substitute(est, mapping, used)))


def _identify_counterfactual(g: GraphView, q: Query) -> Identification:
    algorithm = "IDC*" if q.given else "ID*"
    used = {s for _, s in q.outcome + q.given} | {s for cv, _ in q.outcome + q.given for _, s in cv.do}
    try:
        est = idc_star(g, dict(q.outcome), dict(q.given), used)
    except CounterfactualFailure as fail:
        confounded = [c for c in fail.conflicts if c.confounding()]
        if confounded:
            path = confounded[0].confounding()
            return Identification(
                str(q),
                "counterfactual",
                algorithm,
                "not_identified",
                reason="hidden confounding " + " <-> ".join(path) + ": " + confounded[0].describe(),
                path=path,
                mechanism_nodes=sorted({n for c in fail.conflicts for n in c.own_noise()}),
            )
        nodes = sorted({n for c in fail.conflicts for n in c.own_noise()}, key=g.order.index)
        return Identification(
            str(q),
            "counterfactual",
            algorithm,
            "rests_on_mechanism",
            reason=(
                "not identifiable from the graph: the query conditions on factual values and changes the "
                f"parents of {nodes}, whose factual and counterfactual copies share their exogenous noise ("
                + "; ".join(c.describe() for c in fail.conflicts)
                + "); the answer rests on the mechanism family's assumption for "
                + ", ".join(nodes)
            ),
            path=[n.label() for n in fail.conflicts[0].path()],
            mechanism_nodes=nodes,
        )
    used |= symbols(est)
    experiments = []

    def observational(atom: Prob) -> Expr:
        if not atom.do:
            return atom
        y = frozenset(v for v, _ in atom.event)
        x = frozenset(v for v, _ in atom.do)
        try:
            inner = identify_effect(y, x, Prob(own_values(g.nodes)), g)
        except Hedge:
            experiments.append(str(atom))
            return atom
        return substitute(inner, {**dict(atom.event), **dict(atom.do)}, used)

    est = map_atoms(est, observational)
    status = "identified_with_experiments" if experiments else "identified"
    reason = None
    if experiments:
        reason = "needs interventional data for " + ", ".join(experiments) + " (not identifiable from P(V))"
    return Identification(str(q), "counterfactual", algorithm, status, tidy(est), experiments, reason)
