"""ID* and IDC* (Shpitser & Pearl 2007/2008): counterfactual conjunctions P(gamma | delta) on the
counterfactual graph. The answers are estimands in interventional distributions P(. | do(.)); a district
that must carry two values of one variable (line 8) makes the query fail, and `Conflict` says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from imcf.identify.cfgraph import CfGraph, CfVar, Event, canonical, make_cg
from imcf.identify.estimands import Expr, One, Prob, Zero, fresh, pairs, product_of, ratio_of, sum_over, term
from imcf.identify.graphs import GraphView
from imcf.identify.query import QueryError


@dataclass
class Conflict:
    """ID* line 8: district `district` of the counterfactual graph assigns `var` two values."""

    var: str
    symbols: tuple[str, str]
    carriers: tuple[CfVar, CfVar]
    district: frozenset[CfVar]
    cg: CfGraph

    def _district_graph(self) -> nx.Graph:
        """The district's bidirected edges, added in topological order so that ties break the same way."""
        h = nx.Graph()
        h.add_nodes_from(n for n in self.cg.order if n in self.district)
        pos = {n: i for i, n in enumerate(self.cg.order)}
        edges = [sorted(e, key=pos.__getitem__) for e in self.cg.bi if e <= self.district]
        h.add_edges_from(sorted(edges, key=lambda e: (pos[e[0]], pos[e[1]])))
        return h

    def path(self) -> list[CfVar]:
        """Bidirected path inside the district between the two nodes that carry the clashing values."""
        h = self._district_graph()
        a, b = self.carriers
        return nx.shortest_path(h, a, b) if a != b and nx.has_path(h, a, b) else [a]

    def confounding(self) -> list[str]:
        """Variables joined by hidden confounders in the failing district, along a path from the clash
        ([] when the district is tied together only by each variable's own noise)."""
        h = self._district_graph()
        if all(a.name == b.name for a, b in (tuple(e) for e in self.cg.bi if e <= self.district)):
            return []
        p = self.path()
        if all(a.name == b.name for a, b in zip(p, p[1:])):  # extend to the nearest confounded variable
            lengths = nx.single_source_shortest_path(h, p[0])
            other = min((n for n in lengths if n.name != p[0].name), key=lambda n: len(lengths[n]))
            p = lengths[other]
        out: list[str] = []
        for a, b in zip(p, p[1:]):
            if a.name != b.name:
                for n in (a.name, b.name):
                    if not out or out[-1] != n:
                        out.append(n)
        return out

    def own_noise(self) -> list[str]:
        """Variables whose copies share their own exogenous noise along the path."""
        p = self.path()
        return sorted({a.name for a, b in zip(p, p[1:]) if a.name == b.name} or {p[0].name})

    def describe(self) -> str:
        """One line: which variable takes two values, along which path of the district."""
        p = " <-> ".join(n.label() for n in self.path())
        return f"{self.var} takes two values ({self.symbols[0]} and {self.symbols[1]}) in one district: {p}"


class CounterfactualFailure(Exception):
    """ID* failed; `conflicts` lists every district that made it fail."""

    def __init__(self, conflicts: list[Conflict]):
        super().__init__("; ".join(c.describe() for c in conflicts))
        self.conflicts = conflicts


def id_star(g: GraphView, event: Event, used: set[str]) -> Expr:
    """ID*: P(event) for a conjunction of counterfactual values; raises CounterfactualFailure at line 8."""
    if not event:  # line 1
        return One()
    reduced: Event = {}
    for cv, s in event.items():
        own = dict(cv.do).get(cv.name)
        if own is not None and own != s:  # line 2: violates effectiveness
            return Zero()
        if own is None:  # line 3 drops tautologies X_{x}=x
            reduced[canonical(cv, g)] = s
    made = make_cg(g, [(cv, s, False) for cv, s in reduced.items()])  # line 4
    if made is None:  # line 5
        return Zero()
    cg, ev = made.cg, made.event
    districts = cg.districts()
    if len(districts) > 1:  # line 6
        sym = dict(cg.value)
        over = []
        for n in cg.order:
            if n.fixed is None and n not in ev:
                sym[n] = fresh(n.name, used)
                over.append((n.name, sym[n]))
        terms, failures = [], []
        for s in districts:
            sub_event: Event = {}
            for n in sorted(s, key=cg.order.index):
                do = dict(n.do)
                an = cg.ancestors([n])
                outside = [m for m in cg.order if m in an and m not in s and m.fixed is None]
                for m in reversed(outside):  # nearest ancestors first
                    do.setdefault(m.name, sym[m])
                sub_event[canonical(CfVar(n.name, tuple(sorted(do.items()))), g)] = sym[n]
            try:
                terms.append(id_star(g, sub_event, used))
            except CounterfactualFailure as e:
                failures.extend(e.conflicts)
        if failures:
            raise CounterfactualFailure(failures)
        return sum_over(over, product_of(terms))
    (s,) = districts  # lines 7-9
    seen: dict[str, tuple[str, CfVar]] = {}
    for n in sorted(s, key=cg.order.index):
        assigned = [(n.name, ev[n])] if n in ev else []
        for var, val in assigned + list(n.do):
            if var in seen and seen[var][0] != val:
                raise CounterfactualFailure([Conflict(var, (seen[var][0], val), (seen[var][1], n), s, cg)])
            seen.setdefault(var, (val, n))
    event_pairs = [(n.name, ev[n]) for n in s if n in ev]
    names = {v for v, _ in event_pairs}
    an = g.ancestors(names)
    do = [(v, val) for v, (val, _) in seen.items() if v not in names and v in an]
    return Prob(pairs(event_pairs), (), pairs(do))


def idc_star(g: GraphView, gamma: Event, delta: Event, used: set[str]) -> Expr:
    """IDC*: P(gamma | delta); do-calculus rule 2 in the counterfactual graph moves delta into interventions."""
    if not delta:
        return id_star(g, gamma, used)
    try:
        if isinstance(id_star(g, delta, set(used)), Zero):  # line 1
            raise QueryError(f"the conditioning event {event_text(delta)} has probability 0")
    except CounterfactualFailure:
        pass
    gamma = {canonical(cv, g): s for cv, s in gamma.items() if dict(cv.do).get(cv.name) is None}
    delta = {canonical(cv, g): s for cv, s in delta.items()}
    entries = [(cv, s, False) for cv, s in delta.items()] + [(cv, s, True) for cv, s in gamma.items()]
    made = make_cg(g, entries)  # line 2
    if made is None:  # line 3
        return Zero()
    cg, ev = made.cg, made.event
    dnodes = list(dict.fromkeys(made.node_of[: len(delta)]))
    gnodes = [n for n in dict.fromkeys(made.node_of[len(delta) :]) if n not in dnodes]
    indicators: list[Expr] = list(made.indicators)  # outcomes that are copies of an observed value
    if not gnodes:
        return product_of(indicators)
    h = cg.view
    fixed = [n.label() for n in cg.order if n.fixed is not None]
    for d in dnodes:  # line 4: rule 2 of do-calculus in the counterfactual graph
        others = [m.label() for m in dnodes if m != d]
        if h.d_separated({n.label() for n in gnodes}, {d.label()}, others + fixed, cut_out={d.label()}):
            desc = cg.descendants([d]) - {d}

            def sub(n: CfVar, d: CfVar = d, desc: set[CfVar] = desc) -> CfVar:
                return CfVar(n.name, pairs([*n.do, (d.name, ev[d])])) if n in desc else n

            new_gamma = {sub(n): ev[n] for n in gnodes}
            new_delta = {sub(n): ev[n] for n in dnodes if n != d}
            return product_of([*indicators, idc_star(g, new_gamma, new_delta, used)])
    joint = id_star(g, {n: ev[n] for n in [*gnodes, *dnodes]}, used)  # line 5
    gsyms = [(n.name, ev[n]) for n in gnodes]
    return product_of([*indicators, ratio_of(joint, sum_over(gsyms, joint))])


def event_text(event: Event) -> str:
    """`Y_{do(X=x)}=y, Z` as a query writes it."""
    return ", ".join(term(cv.label(), s) for cv, s in event.items())
