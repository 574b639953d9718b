"""Verdicts: JSON-serialisable answers for `SCM.counterfactual`, evaluate.py and the CLI, naming what each
answer rests on. The assumption texts come from the mechanism families themselves
(`Mechanism.abduction_assumption`), so a new family needs no edit here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from imcf.graph import CausalGraph
from imcf.identify.cfgraph import CfVar
from imcf.identify.estimands import fresh, pairs
from imcf.identify.identification import identify
from imcf.identify.query import Query, QueryError


class NotIdentifiableError(ValueError):
    """A query is not identifiable from the graph (raised by `strict=True`); the message names the path."""


def family_assumption(family: Any, config: Mapping[str, Any] | None = None) -> str:
    """The assumption a mechanism family adds to answer a unit-level counterfactual on its node.

    `family` is a registered family name (as in mechanisms.yaml), a Mechanism class or a Mechanism
    (whose own `config` is used when `config` is None).
    """
    if isinstance(family, str):
        import imcf.mechanisms  # noqa: F401 - importing the package registers every family
        from imcf.registry import MECHANISMS

        if family not in MECHANISMS:
            return (
                f"mechanism family {family!r} states no abduction assumption (known: {sorted(MECHANISMS)}); "
                "its counterfactuals rest on its own modelling choices"
            )
        family = MECHANISMS[family]
    elif not isinstance(family, type):
        config = family.config if config is None else config
        family = type(family)
    return family.abduction_assumption_for(config)


def assumptions_for(nodes: Iterable[str], families: Mapping[str, Any] | None) -> dict[str, str]:
    """{node: the assumption its family adds} for `families` as `verdict` takes them."""
    out = {}
    for n in nodes:
        spec = (families or {}).get(n)
        family, config = (spec.get("family"), spec.get("config")) if isinstance(spec, Mapping) else (spec, None)
        out[n] = family_assumption(family, config) if family else "no mechanism family given for this node"
    return out


def raise_if_strict(result: dict[str, Any], strict: bool) -> None:
    """Raise NotIdentifiableError, naming the confounding path, when `strict` and the query is not identified."""
    if strict and result["status"] == "not_identified":
        path = " <-> ".join(result["path"]) if result["path"] else "a hedge"
        raise NotIdentifiableError(
            f"{result['query']} is not identifiable on graph {result['graph']!r} (confounding path {path}): "
            f"{result['reason']}"
        )


def verdict(
    graph: CausalGraph,
    do: Mapping[str, Any] | Iterable[str],
    outcome: Iterable[str] | None = None,
    given: Iterable[str] = (),
    factual: Iterable[str] = (),
    families: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """JSON-serialisable identifiability verdict for one query on `graph`.

    `do`: intervened nodes (values are not used: an intervention is taken to differ from the factual value).
    `outcome`: nodes asked about (default: every node not intervened on; with `factual`, every node).
    `given`: nodes conditioned on in the intervened world, P(Y | do(X), Z).
    `factual`: nodes observed in the factual world, which makes the query a counterfactual
    P(Y_{do(X)} | factual), as `SCM.counterfactual` answers it.
    `families`: {node: family} or mechanisms.yaml's {node: {family, config}}, to name the assumption each
    answer rests on (a family is a registered name, a Mechanism class or a Mechanism).
    `strict`: raise NotIdentifiableError, naming the confounding path, when status is `not_identified`.
    """
    do_nodes = list(do)
    given, factual = list(given), list(factual)
    if outcome is None:
        outcome = list(graph.nodes) if factual else [n for n in graph.nodes if n not in do_nodes]
    outcome = list(outcome)
    for n in do_nodes + outcome + given + factual:
        if n not in graph:
            raise QueryError(f"unknown node {n!r}; graph {graph.name!r} has {list(graph.nodes)}")
    if not do_nodes:
        raise QueryError("verdict needs at least one intervened node in `do`")
    overlap = set(do_nodes) & set(outcome + given)
    if overlap and not factual:
        raise QueryError(f"nodes {sorted(overlap)} are both intervened on and asked about")
    if factual:
        result = _counterfactual(graph, do_nodes, outcome, given, factual, families)
    else:
        world = pairs((n, n) for n in do_nodes)
        q = Query(tuple((CfVar(n, world), n) for n in outcome), tuple((CfVar(n, world), n) for n in given), True)
        result = identify(graph, q).to_dict()
        result.update(graph=graph.name, nodes={}, assumptions={}, warning=None)
        if result["status"] == "not_identified":
            result["warning"] = f"{result['query']} is not identifiable: {result['reason']}"
    raise_if_strict(result, strict)
    return result


def _counterfactual(
    graph: CausalGraph,
    do_nodes: Sequence[str],
    outcome: Sequence[str],
    given: Sequence[str],
    factual: Sequence[str],
    families: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The verdict of P(outcome_{do} | given_{do}, factual), with one entry per outcome node."""
    world = pairs((n, f"{n}*") for n in do_nodes)
    used = set(factual) | {s for _, s in world}
    delta = tuple((CfVar(n, world), n) for n in given) + tuple((CfVar(n), n) for n in factual)
    asked = [n for n in outcome if n not in do_nodes]

    def cf_query(nodes: Sequence[str]) -> Query:
        return Query(tuple((CfVar(n, world), fresh(n, set(used))) for n in nodes), delta, False)

    descendants = graph.descendants(do_nodes) | set(do_nodes)
    per_node: dict[str, Any] = {}
    for n in outcome:
        if n in do_nodes:
            per_node[n] = {"status": "intervened", "estimand": f"{n} = {n}*", "assumption": None}
            continue
        r = identify(graph, cf_query([n]))
        entry = {"status": r.status, "estimand": None if r.estimand is None else str(r.estimand)}
        if n not in descendants:
            entry["note"] = "not a descendant of the intervention: copied from the factual"
        entry["assumption"] = assumptions_for([n], families)[n] if n in r.mechanism_nodes else None
        if r.status == "not_identified":
            entry["path"] = r.path
        per_node[n] = entry
    if asked:
        result = identify(graph, cf_query(asked)).to_dict()
    else:
        result = {"query": "", "kind": "counterfactual", "algorithm": "IDC*", "status": "identified",
                  "identifiable": True, "estimand": "", "experiments": [], "reason": None, "path": [],
                  "mechanism_nodes": []}  # fmt: skip
    image_nodes = [n for n in asked if graph.kinds[n].is_image and n in descendants]
    order = graph.topological_order
    rests = sorted(set(result["mechanism_nodes"]) | set(image_nodes), key=order.index)
    result.update(graph=graph.name, nodes=per_node, assumptions=assumptions_for(rests, families), warning=None)
    if result["status"] == "not_identified":
        result["warning"] = f"counterfactual not identifiable: {result['reason']}"
    elif result["status"] == "rests_on_mechanism":
        attrs = [n for n in result["mechanism_nodes"] if not graph.kinds[n].is_image]
        if attrs:
            result["warning"] = (
                f"attribute counterfactuals for {attrs} are not identified by the graph; they rest on the "
                "mechanism families' assumptions (see `assumptions`)"
            )
    return result


def counterfactual_verdict(
    graph: CausalGraph,
    do: Mapping[str, Any] | Iterable[str],
    families: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Verdict for what `SCM.counterfactual(factual, do)` answers: P(V_{do} | V = factual) for every node."""
    return verdict(graph, do, factual=graph.nodes, families=families, strict=strict)
