"""Counterfactual variables and the counterfactual graph (Shpitser & Pearl's make-cg).

The counterfactual graph is itself a CausalGraph (wrapped in a GraphView) over the labels of its nodes:
one copy of each variable per world, copies that provably coincide merged (Lemma 24), the copies of one
variable tied by its own noise and the copies of confounded variables by their hidden confounder.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from imcf.graph import CausalGraph
from imcf.identify.estimands import Indicator, Pair
from imcf.identify.graphs import GraphView


@dataclass(frozen=True)
class CfVar:
    """Variable `name` in the world where `do` (sorted (variable, value symbol) pairs) was set."""

    name: str
    do: tuple[Pair, ...] = ()
    fixed: str | None = None  # set for the constant node of an intervened variable in its own world

    def key(self) -> tuple[str, tuple[Pair, ...], str]:
        """Sort key (fixed nodes have no order of their own)."""
        return (self.name, self.do, self.fixed or "")

    def label(self) -> str:
        """`Y_{do(X=x)}`, `Y` in the factual world, `X:=x` for a fixed node."""
        if self.fixed is not None:
            return f"{self.name}:={self.fixed}"
        if not self.do:
            return self.name
        return f"{self.name}_{{do({', '.join(f'{v}={s}' for v, s in self.do)})}}"


Event = dict[CfVar, str]


@functools.lru_cache(maxsize=65536)  # make-cg asks for the same copies over and over; views are immutable
def canonical(cv: CfVar, g: GraphView) -> CfVar:
    """Drop interventions that cannot change the variable (exclusion restriction): those on variables with
    no directed path to it that avoids the other intervened variables."""
    an = g.cut_incoming({v for v, _ in cv.do} - {cv.name}).ancestors([cv.name])
    return CfVar(cv.name, tuple(sorted(p for p in cv.do if p[0] in an - {cv.name})), cv.fixed)


@dataclass
class CfGraph:
    """The counterfactual graph: a view over node labels, the nodes behind them, and the values they carry."""

    view: GraphView
    node: dict[str, CfVar]  # label -> node
    value: dict[CfVar, str]  # event values and fixed values

    def __post_init__(self) -> None:
        self.order = [self.node[label] for label in self.view.order]  # topological
        self.bi = {frozenset((self.node[a], self.node[b])) for a, b in self.view.graph.confounded}

    def _nodes(self, labels: Iterable[str]) -> set[CfVar]:
        return {self.node[label] for label in labels}

    def ancestors(self, nodes: Iterable[CfVar]) -> set[CfVar]:
        """Ancestors including the nodes themselves."""
        return self._nodes(self.view.ancestors(n.label() for n in nodes))

    def descendants(self, nodes: Iterable[CfVar]) -> set[CfVar]:
        """Descendants including the nodes themselves."""
        return self._nodes(self.view.descendants(n.label() for n in nodes))

    def districts(self) -> list[frozenset[CfVar]]:
        """The c-components of the non-fixed nodes, in topological order."""
        comps = (frozenset(self._nodes(c)) for c in self.view.districts())
        return [c for c in comps if any(n.fixed is None for n in c)]


@dataclass
class Made:
    """What make-cg returns: the graph, the value each entry's node carries, entry -> node, indicators."""

    cg: CfGraph
    event: dict[CfVar, str]  # counterfactual-graph node -> value symbol
    node_of: list[CfVar]  # entry index -> node
    indicators: list[Indicator]


@dataclass
class _Values:
    """Values put on counterfactual-graph nodes, each (symbol, hard). A soft value (an outcome) that meets
    another value on one node becomes an indicator 1[soft = other]; two hard values that differ cannot meet."""

    value: dict[CfVar, tuple[str, bool]] = field(default_factory=dict)
    indicators: list[Indicator] = field(default_factory=list)

    def assign(self, node: CfVar, sym: str, hard: bool) -> bool:
        """Put `sym` on `node`; False when it contradicts a hard value already there."""
        old = self.value.get(node)
        if old is None or old[0] == sym:
            self.value[node] = (sym, hard or (old is not None and old[1]))
            return True
        if old[1] and hard:
            return False
        soft_sym, other = (sym, old[0]) if not hard else (old[0], sym)
        self.indicators.append(Indicator(soft_sym, other))
        self.value[node] = (other, old[1] or hard)
        return True

    def symbol(self, node: CfVar) -> str | None:
        val = self.value.get(node)
        return None if val is None else val[0]


def _parallel_worlds(g: GraphView, worlds: Iterable[tuple[Pair, ...]]) -> tuple[dict[CfVar, dict[str, CfVar]], _Values]:
    """One copy of every variable per world ({node: {parent variable: parent node}}) and the fixed values."""
    nodes: dict[CfVar, dict[str, CfVar]] = {}
    values = _Values()
    for w in sorted(worlds):
        wd = dict(w)
        for v in g.order:
            if v in wd:
                node = CfVar(v, (), wd[v])
                nodes.setdefault(node, {})
                values.value[node] = (wd[v], True)
                continue
            node = canonical(CfVar(v, w), g)
            nodes[node] = {p: CfVar(p, (), wd[p]) if p in wd else canonical(CfVar(p, w), g) for p in g.parents(v)}
    return nodes, values


def _merge_copies(
    g: GraphView, nodes: dict[CfVar, dict[str, CfVar]], values: _Values
) -> Callable[[CfVar], CfVar] | None:
    """Merge copies that provably coincide (Lemma 24), parents first: same parents, or parents with the same
    known value. Returns the representative of each node, or None when a merge makes the event inconsistent."""
    rep = {n: n for n in nodes}

    def find(n: CfVar) -> CfVar:
        while rep[n] != n:
            n = rep[n]
        return n

    def same(a: CfVar, b: CfVar) -> bool:
        known = values.symbol(find(a))
        return find(a) == find(b) or (known is not None and known == values.symbol(find(b)))

    for v in g.order:
        copies = sorted((n for n in nodes if n.name == v and n.fixed is None), key=lambda n: (len(n.do), n.key()))
        for a, b in itertools.combinations(copies, 2):
            ra, rb = find(a), find(b)
            if ra == rb or not all(same(nodes[a][p], nodes[b][p]) for p in g.parents(v)):
                continue
            keep, drop = sorted([ra, rb], key=lambda n: (len(n.do), n.key()))
            rep[drop] = keep
            if drop in values.value and not values.assign(keep, *values.value.pop(drop)):
                return None
    return find


def _graph_of(
    g: GraphView, nodes: dict[CfVar, dict[str, CfVar]], find: Callable[[CfVar], CfVar], keep: Sequence[CfVar]
) -> tuple[list[CfVar], dict[CfVar, list[CfVar]], set[frozenset[CfVar]]]:
    """The merged graph restricted to the ancestors of `keep`: topological order, parents, bidirected edges."""
    pa = {n: [find(q) for q in ps.values()] for n, ps in nodes.items() if find(n) == n}
    kept: set[CfVar] = set()
    stack = list(keep)
    while stack:  # ancestors of the event's nodes: the graph is being built, there is no view of it yet
        n = stack.pop()
        if n not in kept:
            kept.add(n)
            stack.extend(pa[n])
    bi: set[frozenset[CfVar]] = set()
    conf = {frozenset(e) for e in g.bi}
    for a, b in itertools.combinations([n for n in nodes if n.fixed is None], 2):
        if a.name == b.name or frozenset((a.name, b.name)) in conf:
            ra, rb = find(a), find(b)
            if ra != rb and ra in kept and rb in kept:
                bi.add(frozenset((ra, rb)))
    pos = {v: i for i, v in enumerate(g.order)}
    order = sorted(kept, key=lambda n: (pos[n.name], len(n.do), n.key()))
    return order, {n: pa[n] for n in order}, bi


def make_cg(g: GraphView, entries: Sequence[tuple[CfVar, str, bool]]) -> Made | None:
    """Counterfactual graph (Shpitser & Pearl's make-cg) for a conjunction of (variable, value, soft).

    Returns None when two hard values meet on one node (the event is inconsistent). A soft value (an
    outcome) that meets another value on one node becomes an indicator 1[soft = other] instead.
    """
    nodes, values = _parallel_worlds(g, {cv.do for cv, _, _ in entries})
    for cv, s, soft in entries:
        if not values.assign(cv, s, not soft):
            return None
    find = _merge_copies(g, nodes, values)
    if find is None:
        return None
    node_of = [find(cv) for cv, _, _ in entries]
    order, pa, bi = _graph_of(g, nodes, find, node_of)
    label = {n: n.label() for n in order}
    graph = CausalGraph(
        {label[n]: g.graph.kinds[n.name] for n in order},
        {label[n]: [label[p] for p in pa[n]] for n in order},
        [[label[a] for a in e] for e in bi],
        allow_image_children=True,  # copies of an image node keep the (allowed) edges of the original graph
        name=f"{g.graph.name} (counterfactual graph)",
    )
    value = {n: values.value[n][0] for n in order if n in values.value}
    cg = CfGraph(GraphView(graph), {label[n]: n for n in order}, value)
    return Made(cg, {n: values.value[n][0] for n in node_of}, node_of, values.indicators)
