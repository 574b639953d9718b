"""Identifiability of interventional and counterfactual queries on a CausalGraph (ID, IDC, ID*, IDC*).

A query is answered from the graph alone when an identification algorithm turns it into an estimand: an
expression in the observational distribution P(V) (or, for counterfactuals, in interventional distributions
P(. | do(.)) that a randomized experiment would give). When the algorithm fails, the counterfactual the SCM
returns rests on something the graph does not say: the mechanism family's assumption about its own noise,
or, worse, a hidden confounder that no per-node mechanism can pin down.

Algorithms (written here; see docs/identifiability.md for why y0 is not wrapped):
- ID (Shpitser & Pearl 2006) for P(Y | do(X)), with Tian & Pearl's c-component factorisation;
- IDC (Shpitser & Pearl 2006b) for P(Y | do(X), Z);
- ID* / IDC* (Shpitser & Pearl 2007/2008) for counterfactual conjunctions P(gamma | delta), on the
  counterfactual graph built by make-cg.

Entry points: `identify(graph, "P(...)")`, `verdict(graph, do=..., outcome=..., given=..., factual=...,
families=...)` (a JSON-serialisable dict), `counterfactual_verdict(graph, do, families)` for
`SCM.counterfactual`, `family_assumption(family)`, and `python -m imcf.identify graph=... query=...`.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from imcf.graph import CausalGraph, GraphError

Pair = tuple[str, str]  # (variable, value symbol); the symbol equal to the variable name means "its value"

STATUSES = ("identified", "identified_with_experiments", "rests_on_mechanism", "not_identified")

# What each mechanism family adds so that a unit-level counterfactual gets one answer (keys are
# `family` names as in mechanisms.yaml).
FAMILY_ASSUMPTIONS: dict[str, str] = {
    "flow": (
        "exact invertible mechanism: the normalizing flow is a bijection between the node and its noise "
        "given the parents, so abduction recovers the noise exactly; the counterfactual is the one of the "
        "bijective (monotone, for 1-d nodes) SCM the flow was fitted as, which the data alone cannot single out"
    ),
    "linear_gaussian": (
        "exact invertible mechanism: additive Gaussian noise, u = x - f(pa) recovered exactly; the "
        "counterfactual holds if the true mechanism is additive-noise"
    ),
    "ddim": (
        "exact invertible mechanism (up to solver error): deterministic DDIM inversion maps the image to "
        "its latent noise given the parents; the counterfactual is that of the learned ODE map, one "
        "bijection among many that fit the same data"
    ),
    "vae": (
        "approximate abduction: the encoder's posterior q(z | x, pa) stands in for the true noise "
        "posterior; the counterfactual assumes the latent captures all of the image's noise and nothing "
        "of its parents (disentanglement), and reconstruction error is attributed to a fixed residual"
    ),
    "hvae": (
        "approximate abduction: the hierarchical encoder's posterior over all latent levels stands in "
        "for the true noise posterior; the counterfactual assumes the latents are independent of the "
        "parents and capture the image's noise (disentanglement), reconstruction error is a residual"
    ),
    "gan": (
        "approximate abduction: the noise is found by an encoder or by inverting the generator "
        "(optimisation), with no guarantee that it is the posterior of the true noise; the counterfactual "
        "assumes the recovered latent is parent-independent"
    ),
    "latent_image": (
        "approximate abduction: an encoder's latent code (plus an optional pixel residual) stands in for "
        "the true noise; the counterfactual assumes the code is independent of the parents"
    ),
    "discrete": (
        "discrete counterfactuals are not identified by data: the Gumbel-max SCM (Oberst & Sontag 2019; "
        "mode=gumbel, counterfactual stability) or the inverse-CDF threshold SCM (mode=threshold, "
        "monotone in the noise) chooses one of the SCMs that fit the same observational distribution"
    ),
}
_DISCRETE_MODES = {
    "gumbel": "Gumbel-max SCM (Oberst & Sontag 2019): counterfactual stability chooses the counterfactual",
    "threshold": "inverse-CDF threshold SCM: a monotone noise-to-class map chooses the counterfactual",
}


def family_assumption(family: str, config: Mapping[str, Any] | None = None) -> str:
    """The assumption a mechanism family adds to answer a unit-level counterfactual on its node."""
    if family == "discrete" and config and config.get("mode") in _DISCRETE_MODES:
        return f"{_DISCRETE_MODES[config['mode']]}; not identified by data alone"
    if family in FAMILY_ASSUMPTIONS:
        return FAMILY_ASSUMPTIONS[family]
    return (
        f"mechanism family {family!r} states no abduction assumption "
        f"(known: {sorted(FAMILY_ASSUMPTIONS)}); its counterfactuals rest on its own modelling choices"
    )


class NotIdentifiableError(ValueError):
    """A query is not identifiable from the graph (raised by `strict=True`); the message names the path."""


class QueryError(ValueError):
    """A query string or argument is malformed; the message names the culprit."""


# ----------------------------------------------------------------------------------------------------------
# Graph with bidirected edges (internal, frozen sets so the recursion can slice it cheaply)
# ----------------------------------------------------------------------------------------------------------
class _ADMG:
    """Acyclic directed mixed graph: `order` (topological), `pa` {node: frozenset}, `bi` set of pairs."""

    def __init__(self, order: Sequence[str], pa: Mapping[str, Iterable[str]], bi: Iterable[Iterable[str]]):
        self.order = tuple(order)
        self.nodes = frozenset(self.order)
        self.pa = {n: frozenset(pa.get(n, ())) & self.nodes for n in self.order}
        self.bi = frozenset(frozenset(e) for e in bi if set(e) <= self.nodes and len(set(e)) == 2)

    @classmethod
    def from_graph(cls, graph: CausalGraph) -> _ADMG:
        order = graph.topological_order
        return cls(order, {n: graph.parents(n) for n in order}, graph.confounded)

    def subgraph(self, keep: Iterable[str]) -> _ADMG:
        keep = set(keep)
        return _ADMG([n for n in self.order if n in keep], self.pa, self.bi)

    def ancestors(self, nodes: Iterable[str]) -> set[str]:
        """Ancestors including the nodes themselves (directed edges only)."""
        out, stack = set(), list(nodes)
        while stack:
            n = stack.pop()
            if n not in out:
                out.add(n)
                stack.extend(self.pa[n])
        return out

    def descendants(self, nodes: Iterable[str]) -> set[str]:
        """Descendants including the nodes themselves."""
        ch: dict[str, set[str]] = {n: set() for n in self.order}
        for n, ps in self.pa.items():
            for p in ps:
                ch[p].add(n)
        out, stack = set(), list(nodes)
        while stack:
            n = stack.pop()
            if n not in out:
                out.add(n)
                stack.extend(ch[n])
        return out

    def districts(self) -> list[frozenset[str]]:
        g = nx.Graph()
        g.add_nodes_from(self.order)
        g.add_edges_from(tuple(e) for e in self.bi)
        pos = {n: i for i, n in enumerate(self.order)}
        return sorted((frozenset(c) for c in nx.connected_components(g)), key=lambda c: min(pos[n] for n in c))

    def bidirected_path(self, sources: Iterable[str], targets: Iterable[str]) -> list[str]:
        """A shortest path of bidirected edges from any source to any target ([] when there is none)."""
        g = nx.Graph()
        g.add_nodes_from(self.order)
        g.add_edges_from(tuple(e) for e in self.bi)
        best: list[str] = []
        for s in sorted(set(sources) & self.nodes, key=self.order.index):
            for t in sorted(set(targets) & self.nodes, key=self.order.index):
                if s != t and nx.has_path(g, s, t):
                    p = nx.shortest_path(g, s, t)
                    if not best or len(p) < len(best):
                        best = p
        return best

    def d_separated(
        self,
        a: Iterable[str],
        b: Iterable[str],
        given: Iterable[str] = (),
        cut_in: Iterable[str] = (),
        cut_out: Iterable[str] = (),
    ) -> bool:
        """(a _||_ b | given) in the graph with arrows into `cut_in` and out of `cut_out` removed."""
        a, b, given = set(a), set(b), set(given)
        if a & b:
            return False
        cut_in, cut_out = set(cut_in), set(cut_out)
        dag = nx.DiGraph()
        dag.add_nodes_from(self.order)
        for n, ps in self.pa.items():
            if n in cut_in:
                continue
            dag.add_edges_from((p, n) for p in ps if p not in cut_out)
        for i, e in enumerate(self.bi):
            u, v = tuple(e)
            if u in cut_in or v in cut_in:
                continue
            dag.add_edges_from([(("_latent", i), u), (("_latent", i), v)])
        return nx.is_d_separator(dag, a, b, given - a - b)


# ----------------------------------------------------------------------------------------------------------
# Estimand expressions
# ----------------------------------------------------------------------------------------------------------
class Expr:
    """A symbolic estimand; `str(e)` renders it, `evaluate` computes it from a distribution oracle."""

    def free(self) -> set[str]:
        raise NotImplementedError

    def __str__(self) -> str:
        return _render(self)


@dataclass(frozen=True)
class One(Expr):
    def free(self) -> set[str]:
        return set()


@dataclass(frozen=True)
class Zero(Expr):
    def free(self) -> set[str]:
        return set()


@dataclass(frozen=True)
class Prob(Expr):
    """P(event | do(do), given); each entry is (variable, value symbol)."""

    event: tuple[Pair, ...]
    given: tuple[Pair, ...] = ()
    do: tuple[Pair, ...] = ()

    def free(self) -> set[str]:
        return {s for _, s in self.event + self.given + self.do}


@dataclass(frozen=True)
class Product(Expr):
    factors: tuple[Expr, ...]

    def free(self) -> set[str]:
        return set().union(*(f.free() for f in self.factors))


@dataclass(frozen=True)
class Sum(Expr):
    """Sum over the values of `over` (variable, bound symbol) of `body`."""

    over: tuple[Pair, ...]
    body: Expr

    def free(self) -> set[str]:
        return self.body.free() - {s for _, s in self.over}


@dataclass(frozen=True)
class Ratio(Expr):
    num: Expr
    den: Expr

    def free(self) -> set[str]:
        return self.num.free() | self.den.free()


@dataclass(frozen=True)
class Indicator(Expr):
    """1[a = b]: a counterfactual copied from the factual value."""

    a: str
    b: str

    def free(self) -> set[str]:
        return {self.a, self.b}


def _pairs(items: Iterable[Pair]) -> tuple[Pair, ...]:
    return tuple(sorted(set(items)))


def _product(factors: Iterable[Expr]) -> Expr:
    flat: list[Expr] = []
    for f in factors:
        if isinstance(f, Zero):
            return Zero()
        if isinstance(f, Product):
            flat.extend(f.factors)
        elif not isinstance(f, One):
            flat.append(f)
    if not flat:
        return One()
    return flat[0] if len(flat) == 1 else Product(tuple(flat))


def _sum(over: Iterable[Pair], body: Expr) -> Expr:
    """Sum with the simplifications that keep estimands readable (each one an identity)."""
    over = {p for p in over if p[1] in body.free()}
    if not over or isinstance(body, (One, Zero)):
        return body
    if isinstance(body, Sum):
        return _sum(over | set(body.over), body.body)
    syms = {s for _, s in over}
    if isinstance(body, Prob):
        if not syms & {s for _, s in body.given + body.do}:
            rest = tuple(p for p in body.event if p[1] not in syms)
            return Prob(rest, body.given, body.do) if rest else One()
        return Sum(_pairs(over), body)
    if isinstance(body, Product):
        factors = list(body.factors)
        changed = True
        while changed:  # sum_v P(v | rest) = 1 when v appears nowhere else
            changed = False
            for i, f in enumerate(factors):
                if not isinstance(f, Prob) or not f.event:
                    continue
                ev = {s for _, s in f.event}
                others = set().union(*(g.free() for j, g in enumerate(factors) if j != i))
                cond = {s for _, s in f.given + f.do}
                if ev <= syms and not ev & others and not ev & cond:
                    factors.pop(i)
                    syms -= ev
                    over = {p for p in over if p[1] not in ev}
                    changed = True
                    break
        inside = [f for f in factors if f.free() & syms]
        outside = [f for f in factors if not f.free() & syms]
        if not over:
            return _product(factors)
        inner = _product(inside)
        if isinstance(inner, Prob):
            return _product([*outside, _sum(over, inner)])
        return _product([*outside, Sum(_pairs(over), inner)])
    return Sum(_pairs(over), body)


def _ratio(num: Expr, den: Expr) -> Expr:
    if isinstance(den, One):
        return num
    if isinstance(num, Zero):
        return num
    if num == den:
        return One()
    if isinstance(num, Product) and den in num.factors:  # A B / A = B
        rest = list(num.factors)
        rest.remove(den)
        return _product(rest)
    if isinstance(num, Prob) and isinstance(den, Prob) and num.given == den.given and num.do == den.do:
        if set(den.event) < set(num.event):
            rest = tuple(p for p in num.event if p not in den.event)
            return Prob(rest, _pairs(num.given + den.event), num.do)
    return Ratio(num, den)


def _fresh(var: str, used: set[str]) -> str:
    sym = var
    while sym in used:
        sym += "'"
    used.add(sym)
    return sym


def _substitute(expr: Expr, mapping: Mapping[str, str], used: set[str]) -> Expr:
    """Rename free symbols by `mapping`; bound symbols that would clash are renamed fresh."""
    if isinstance(expr, (One, Zero)):
        return expr
    if isinstance(expr, Indicator):
        return Indicator(mapping.get(expr.a, expr.a), mapping.get(expr.b, expr.b))
    if isinstance(expr, Prob):

        def m(ps: tuple[Pair, ...]) -> tuple[Pair, ...]:
            return _pairs((v, mapping.get(s, s)) for v, s in ps)

        return Prob(m(expr.event), m(expr.given), m(expr.do))
    if isinstance(expr, Product):
        return _product(_substitute(f, mapping, used) for f in expr.factors)
    if isinstance(expr, Ratio):
        return _ratio(_substitute(expr.num, mapping, used), _substitute(expr.den, mapping, used))
    if isinstance(expr, Sum):
        inner = {k: v for k, v in mapping.items() if k not in {s for _, s in expr.over}}
        over = []
        for var, s in expr.over:
            new = _fresh(var, used) if s in inner.values() else s
            used.add(new)
            if new != s:
                inner[s] = new
            over.append((var, new))
        return _sum(over, _substitute(expr.body, inner, used))
    raise TypeError(type(expr))


def _tidy(expr: Expr, taken: set[str] | None = None) -> Expr:
    """Rename bound symbols that shadow a symbol in scope, so a printed estimand reads unambiguously."""
    taken = set(expr.free()) if taken is None else taken
    if isinstance(expr, Sum):
        mapping, over = {}, []
        for var, s in expr.over:
            new = _fresh(var, taken) if s in taken else s
            taken.add(new)
            if new != s:
                mapping[s] = new
            over.append((var, new))
        body = _substitute(expr.body, mapping, set(taken)) if mapping else expr.body
        return Sum(_pairs(over), _tidy(body, set(taken)))
    if isinstance(expr, Product):
        return Product(tuple(_tidy(f, set(taken)) for f in expr.factors))
    if isinstance(expr, Ratio):
        return Ratio(_tidy(expr.num, set(taken)), _tidy(expr.den, set(taken)))
    return expr


def _term(var: str, sym: str) -> str:
    return var if sym == var else f"{var}={sym}"


def _render(e: Expr, wrap: bool = False) -> str:
    if isinstance(e, One):
        return "1"
    if isinstance(e, Zero):
        return "0"
    if isinstance(e, Indicator):
        return f"1[{e.a} = {e.b}]"
    if isinstance(e, Prob):
        left = ", ".join(_term(v, s) for v, s in e.event)
        right = []
        if e.do:
            right.append("do(" + ", ".join(_term(v, s) for v, s in e.do) + ")")
        right += [_term(v, s) for v, s in e.given]
        return f"P({left} | {', '.join(right)})" if right else f"P({left})"
    if isinstance(e, Product):
        return " ".join(_render(f, wrap=True) for f in e.factors)
    if isinstance(e, Sum):
        text = f"sum_{{{', '.join(s for _, s in e.over)}}} {_render(e.body)}"
        return f"[{text}]" if wrap else text
    if isinstance(e, Ratio):
        text = f"{_render(e.num, True)} / {_render(e.den, True)}"
        return f"[{text}]" if wrap else text
    raise TypeError(type(e))


def evaluate(
    expr: Expr,
    values: Mapping[str, Any],
    prob: Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], float],
    domains: Mapping[str, Sequence[Any]],
) -> float:
    """Value of an estimand: `values` binds free symbols, `prob(event, given, do)` gives P terms."""
    if isinstance(expr, One):
        return 1.0
    if isinstance(expr, Zero):
        return 0.0
    if isinstance(expr, Indicator):
        return float(values[expr.a] == values[expr.b])
    if isinstance(expr, Prob):

        def bind(ps: tuple[Pair, ...]) -> dict[str, Any]:
            return {v: values[s] for v, s in ps}

        return prob(bind(expr.event), bind(expr.given), bind(expr.do))
    if isinstance(expr, Product):
        out = 1.0
        for f in expr.factors:
            out *= evaluate(f, values, prob, domains)
        return out
    if isinstance(expr, Ratio):
        den = evaluate(expr.den, values, prob, domains)
        return evaluate(expr.num, values, prob, domains) / den if den else 0.0
    if isinstance(expr, Sum):
        total = 0.0
        for combo in itertools.product(*(domains[v] for v, _ in expr.over)):
            bound = dict(values)
            bound.update({s: c for (_, s), c in zip(expr.over, combo)})
            total += evaluate(expr.body, bound, prob, domains)
        return total
    raise TypeError(type(expr))


# ----------------------------------------------------------------------------------------------------------
# ID and IDC
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Hedge(Exception):
    """ID line 5: `forest` and `subforest` are c-components; the treatments cut into `forest` only."""

    forest: frozenset[str]
    subforest: frozenset[str]
    graph: _ADMG
    treatments: frozenset[str]
    outcomes: frozenset[str]

    def path(self) -> list[str]:
        tr = self.treatments & self.forest
        return self.graph.bidirected_path(tr, self.outcomes & self.subforest) or self.graph.bidirected_path(
            tr, self.subforest
        )


def _me(names: Iterable[str]) -> tuple[Pair, ...]:
    return _pairs((n, n) for n in names)


def _is_joint(P: Expr) -> bool:
    return isinstance(P, Prob) and not P.given and not P.do


def _conditional(P: Expr, v: str, pre: Sequence[str], g: _ADMG) -> Expr:
    """P(v | pre) computed from the current distribution P over g's nodes."""
    if _is_joint(P):
        keep = list(pre)
        for w in reversed(pre):  # drop conditioning variables that the graph makes irrelevant
            rest = [u for u in keep if u != w]
            if g.d_separated({v}, {w}, rest):
                keep = rest
        return Prob(_me([v]), _me(keep))
    num = _sum(_me(g.nodes - set(pre) - {v}), P)
    den = _sum(_me(g.nodes - set(pre)), P)
    return _ratio(num, den)


def _id(y: frozenset[str], x: frozenset[str], P: Expr, g: _ADMG) -> Expr:
    v = g.nodes
    if not x:  # line 1
        return _sum(_me(v - y), P)
    an = g.ancestors(y)
    if v - an:  # line 2
        return _id(y, x & an, _sum(_me(v - an), P), g.subgraph(an))
    g_xbar_an = _ADMG(g.order, {n: (() if n in x else g.pa[n]) for n in g.order}, g.bi).ancestors(y)
    w = (v - x) - g_xbar_an
    if w:  # line 3
        return _id(y, x | w, P, g)
    districts = g.subgraph(v - x).districts()
    if len(districts) > 1:  # line 4
        return _sum(_me(v - (y | x)), _product(_id(s, v - s, P, g) for s in districts))
    (s,) = districts
    whole = g.districts()
    if len(whole) == 1:  # line 5: a hedge
        raise _Hedge(v, s, g, x, y)
    order = list(g.order)
    if s in whole:  # line 6
        return _sum(_me(s - y), _product(_conditional(P, n, order[: order.index(n)], g) for n in order if n in s))
    (sp,) = [d for d in whole if s < d]  # line 7
    factors = [_conditional(P, n, order[: order.index(n)], g) for n in order if n in sp]
    return _id(y, x & sp, _product(factors), g.subgraph(sp))


def _idc(y: frozenset[str], x: frozenset[str], z: frozenset[str], g: _ADMG) -> Expr:
    for zi in sorted(z, key=g.order.index):
        if g.d_separated(y, {zi}, x | (z - {zi}), cut_in=x, cut_out={zi}):  # rule 2: observe -> do
            return _idc(y, x | {zi}, z - {zi}, g)
    joint = Prob(_me(g.nodes))
    P = _id(y | z, x, joint, g)
    return _ratio(P, _sum(_me(y), P)) if z else P


# ----------------------------------------------------------------------------------------------------------
# Counterfactual variables, make-cg, ID*, IDC*
# ----------------------------------------------------------------------------------------------------------
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
        if self.fixed is not None:
            return f"{self.name}:={self.fixed}"
        if not self.do:
            return self.name
        return f"{self.name}_{{do({', '.join(f'{v}={s}' for v, s in self.do)})}}"


Event = dict[CfVar, str]


def _canonical(cv: CfVar, g: _ADMG) -> CfVar:
    """Drop interventions that cannot change the variable (exclusion restriction): those on variables with
    no directed path to it that avoids the other intervened variables."""
    fixed = {v for v, _ in cv.do}
    an, stack = set(), [cv.name]
    while stack:
        n = stack.pop()
        if n not in an:
            an.add(n)
            if n not in fixed or n == cv.name:
                stack.extend(g.pa[n])
    return CfVar(cv.name, tuple(sorted(p for p in cv.do if p[0] in an - {cv.name})), cv.fixed)


@dataclass
class _CfGraph:
    order: list[CfVar]  # topological
    pa: dict[CfVar, dict[str, CfVar]]  # node -> {parent variable: parent node}
    bi: set[frozenset[CfVar]]
    value: dict[CfVar, str]  # event values and fixed values

    def admg(self) -> _ADMG:
        """The same graph over string labels, for d-separation and paths."""
        lab = {n: n.label() for n in self.order}
        return _ADMG([lab[n] for n in self.order], {lab[n]: [lab[p] for p in self.pa[n].values()] for n in self.order},
                     [[lab[a] for a in e] for e in self.bi])  # fmt: skip

    def ancestors(self, nodes: Iterable[CfVar]) -> set[CfVar]:
        out, stack = set(), list(nodes)
        while stack:
            n = stack.pop()
            if n not in out:
                out.add(n)
                stack.extend(self.pa[n].values())
        return out


@dataclass
class _Conflict:
    """ID* line 8: district `district` of the counterfactual graph assigns `var` two values."""

    var: str
    symbols: tuple[str, str]
    carriers: tuple[CfVar, CfVar]
    district: frozenset[CfVar]
    cg: _CfGraph

    def path(self) -> list[CfVar]:
        """Bidirected path inside the district between the two nodes that carry the clashing values."""
        h = nx.Graph()
        h.add_nodes_from(self.district)
        h.add_edges_from(tuple(e) for e in self.cg.bi if e <= self.district)
        a, b = self.carriers
        return nx.shortest_path(h, a, b) if a != b and nx.has_path(h, a, b) else [a]

    def confounding(self) -> list[str]:
        """Variables joined by hidden confounders in the failing district, along a path from the clash
        ([] when the district is tied together only by each variable's own noise)."""
        h = nx.Graph()
        h.add_nodes_from(self.district)
        h.add_edges_from(tuple(e) for e in self.cg.bi if e <= self.district)
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
        p = " <-> ".join(n.label() for n in self.path())
        return f"{self.var} takes two values ({self.symbols[0]} and {self.symbols[1]}) in one district: {p}"


class _CfFail(Exception):
    """ID* failed; `conflicts` lists every district that made it fail."""

    def __init__(self, conflicts: list[_Conflict]):
        super().__init__("; ".join(c.describe() for c in conflicts))
        self.conflicts = conflicts


def _make_cg(g: _ADMG, entries: Sequence[tuple[CfVar, str, bool]]) -> _Made | None:
    """Counterfactual graph (Shpitser & Pearl's make-cg) for a conjunction of (variable, value, soft).

    Returns None when two hard values meet on one node (the event is inconsistent). A soft value (an
    outcome) that meets another value on one node becomes an indicator 1[soft = other] instead.
    """
    worlds = {cv.do for cv, _, _ in entries}
    nodes: dict[CfVar, dict[str, CfVar]] = {}
    value: dict[CfVar, tuple[str, bool]] = {}  # node -> (symbol, hard)
    for w in sorted(worlds):
        wd = dict(w)
        for v in g.order:
            if v in wd:
                node = CfVar(v, (), wd[v])
                nodes.setdefault(node, {})
                value[node] = (wd[v], True)
                continue
            node = _canonical(CfVar(v, w), g)
            nodes[node] = {p: CfVar(p, (), wd[p]) if p in wd else _canonical(CfVar(p, w), g) for p in g.pa[v]}
    indicators: list[Indicator] = []

    def assign(node: CfVar, sym: str, hard: bool) -> bool:
        old = value.get(node)
        if old is None or old[0] == sym:
            value[node] = (sym, hard or (old is not None and old[1]))
            return True
        if old[1] and hard:
            return False
        soft_sym, other = (sym, old[0]) if not hard else (old[0], sym)
        indicators.append(Indicator(soft_sym, other))
        value[node] = (other, old[1] or hard)
        return True

    for cv, s, soft in entries:
        if not assign(cv, s, not soft):
            return None
    rep = {n: n for n in nodes}

    def find(n: CfVar) -> CfVar:
        while rep[n] != n:
            n = rep[n]
        return n

    def known(n: CfVar) -> str | None:
        val = value.get(find(n))
        return None if val is None else val[0]

    for v in g.order:  # merge copies that provably coincide (Lemma 24), parents first
        copies = sorted((n for n in nodes if n.name == v and n.fixed is None), key=lambda n: (len(n.do), n.key()))
        for a, b in itertools.combinations(copies, 2):
            ra, rb = find(a), find(b)
            if ra == rb:
                continue
            if not all(
                find(nodes[a][p]) == find(nodes[b][p])
                or (known(nodes[a][p]) is not None and known(nodes[a][p]) == known(nodes[b][p]))
                for p in g.pa[v]
            ):
                continue
            keep, drop = sorted([ra, rb], key=lambda n: (len(n.do), n.key()))
            rep[drop] = keep
            if drop in value and not assign(keep, *value.pop(drop)):
                return None
    reps = [n for n in nodes if find(n) == n]
    pa = {n: {p: find(q) for p, q in nodes[n].items()} for n in reps}
    bi: set[frozenset[CfVar]] = set()
    conf = {frozenset(e) for e in g.bi}
    for a, b in itertools.combinations([n for n in nodes if n.fixed is None], 2):
        if a.name == b.name or frozenset((a.name, b.name)) in conf:
            ra, rb = find(a), find(b)
            if ra != rb:
                bi.add(frozenset((ra, rb)))
    node_of = [find(cv) for cv, _, _ in entries]
    keep_nodes: set[CfVar] = set()
    stack = list(node_of)
    while stack:
        n = stack.pop()
        if n not in keep_nodes:
            keep_nodes.add(n)
            stack.extend(pa[n].values())
    pos = {v: i for i, v in enumerate(g.order)}
    order = sorted(keep_nodes, key=lambda n: (pos[n.name], len(n.do), n.key()))
    cg = _CfGraph(
        order,
        {n: pa[n] for n in order},
        {e for e in bi if e <= keep_nodes},
        {n: value[n][0] for n in order if n in value},
    )
    return _Made(cg, {n: value[n][0] for n in node_of}, node_of, indicators)


@dataclass
class _Made:
    cg: _CfGraph
    event: dict[CfVar, str]  # counterfactual-graph node -> value symbol
    node_of: list[CfVar]  # entry index -> node
    indicators: list[Indicator]


def _cf_districts(cg: _CfGraph) -> list[frozenset[CfVar]]:
    h = nx.Graph()
    h.add_nodes_from(n for n in cg.order if n.fixed is None)
    h.add_edges_from(tuple(e) for e in cg.bi)
    pos = {n: i for i, n in enumerate(cg.order)}
    return sorted((frozenset(c) for c in nx.connected_components(h)), key=lambda c: min(pos[n] for n in c))


def _id_star(g: _ADMG, event: Event, used: set[str]) -> Expr:
    if not event:  # line 1
        return One()
    reduced: Event = {}
    for cv, s in event.items():
        own = dict(cv.do).get(cv.name)
        if own is not None and own != s:  # line 2: violates effectiveness
            return Zero()
        if own is None:  # line 3 drops tautologies X_{x}=x
            reduced[_canonical(cv, g)] = s
    made = _make_cg(g, [(cv, s, False) for cv, s in reduced.items()])  # line 4
    if made is None:  # line 5
        return Zero()
    cg, ev = made.cg, made.event
    districts = _cf_districts(cg)
    if len(districts) > 1:  # line 6
        sym = dict(cg.value)
        over = []
        for n in cg.order:
            if n.fixed is None and n not in ev:
                sym[n] = _fresh(n.name, used)
                over.append((n.name, sym[n]))
        terms, failures = [], []
        for s in districts:
            sub_event: Event = {}
            for n in s:
                do = dict(n.do)
                outside = [m for m in cg.order if m in cg.ancestors([n]) and m not in s and m.fixed is None]
                for m in reversed(outside):  # nearest ancestors first
                    do.setdefault(m.name, sym[m])
                sub_event[_canonical(CfVar(n.name, tuple(sorted(do.items()))), g)] = sym[n]
            try:
                terms.append(_id_star(g, sub_event, used))
            except _CfFail as e:
                failures.extend(e.conflicts)
        if failures:
            raise _CfFail(failures)
        return _sum(over, _product(terms))
    (s,) = districts  # lines 7-9
    seen: dict[str, tuple[str, CfVar]] = {}
    for n in sorted(s, key=cg.order.index):
        assigned = [(n.name, ev[n])] if n in ev else []
        for var, val in assigned + list(n.do):
            if var in seen and seen[var][0] != val:
                raise _CfFail([_Conflict(var, (seen[var][0], val), (seen[var][1], n), s, cg)])
            seen.setdefault(var, (val, n))
    event_pairs = [(n.name, ev[n]) for n in s if n in ev]
    names = {v for v, _ in event_pairs}
    an = g.ancestors(names)
    do = [(v, val) for v, (val, _) in seen.items() if v not in names and v in an]
    return Prob(_pairs(event_pairs), (), _pairs(do))


def _idc_star(g: _ADMG, gamma: Event, delta: Event, used: set[str]) -> Expr:
    if not delta:
        return _id_star(g, gamma, used)
    try:
        if isinstance(_id_star(g, delta, set(used)), Zero):  # line 1
            raise QueryError(f"the conditioning event {_event_text(delta)} has probability 0")
    except _CfFail:
        pass
    gamma = {_canonical(cv, g): s for cv, s in gamma.items() if dict(cv.do).get(cv.name) is None}
    delta = {_canonical(cv, g): s for cv, s in delta.items()}
    entries = [(cv, s, False) for cv, s in delta.items()] + [(cv, s, True) for cv, s in gamma.items()]
    made = _make_cg(g, entries)  # line 2
    if made is None:  # line 3
        return Zero()
    cg, ev = made.cg, made.event
    dnodes = list(dict.fromkeys(made.node_of[: len(delta)]))
    gnodes = [n for n in dict.fromkeys(made.node_of[len(delta) :]) if n not in dnodes]
    indicators: list[Expr] = list(made.indicators)  # outcomes that are copies of an observed value
    if not gnodes:
        return _product(indicators)
    h = cg.admg()
    fixed = [n.label() for n in cg.order if n.fixed is not None]
    for d in dnodes:  # line 4: rule 2 of do-calculus in the counterfactual graph
        others = [m.label() for m in dnodes if m != d]
        if h.d_separated({n.label() for n in gnodes}, {d.label()}, others + fixed, cut_out={d.label()}):
            desc = _cf_descendants(cg, d) - {d}

            def sub(n: CfVar, d: CfVar = d, desc: set[CfVar] = desc) -> CfVar:
                return CfVar(n.name, _pairs([*n.do, (d.name, ev[d])])) if n in desc else n

            new_gamma = {sub(n): ev[n] for n in gnodes}
            new_delta = {sub(n): ev[n] for n in dnodes if n != d}
            return _product([*indicators, _idc_star(g, new_gamma, new_delta, used)])
    joint = _id_star(g, {n: ev[n] for n in [*gnodes, *dnodes]}, used)  # line 5
    gsyms = [(n.name, ev[n]) for n in gnodes]
    return _product([*indicators, _ratio(joint, _sum(gsyms, joint))])


def _cf_descendants(cg: _CfGraph, node: CfVar) -> set[CfVar]:
    out, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in out:
            continue
        out.add(n)
        stack.extend(m for m in cg.order if n in cg.pa[m].values())
    return out


def _event_text(event: Event) -> str:
    return ", ".join(_term(cv.label(), s) for cv, s in event.items())


def _map_atoms(expr: Expr, fn: Callable[[Prob], Expr]) -> Expr:
    if isinstance(expr, Prob):
        return fn(expr)
    if isinstance(expr, Product):
        return _product(_map_atoms(f, fn) for f in expr.factors)
    if isinstance(expr, Sum):
        return _sum(expr.over, _map_atoms(expr.body, fn))
    if isinstance(expr, Ratio):
        return _ratio(_map_atoms(expr.num, fn), _map_atoms(expr.den, fn))
    return expr


def _atoms(expr: Expr) -> list[Prob]:
    out: list[Prob] = []
    _map_atoms(expr, lambda a: out.append(a) or a)
    return out


def _symbols(expr: Expr) -> set[str]:
    out = set(expr.free())
    if isinstance(expr, Sum):
        out |= {s for _, s in expr.over} | _symbols(expr.body)
    for child in getattr(expr, "factors", ()) + tuple(getattr(expr, a) for a in ("num", "den") if hasattr(expr, a)):
        out |= _symbols(child)
    return out


# ----------------------------------------------------------------------------------------------------------
# Queries
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """P(outcome | given): counterfactual terms (CfVar, value symbol); `interventional` when all share one
    world do(X) written as `do(...)` (then ID / IDC answer it; otherwise ID* / IDC*)."""

    outcome: tuple[tuple[CfVar, str], ...]
    given: tuple[tuple[CfVar, str], ...] = ()
    interventional: bool = False

    @property
    def do(self) -> tuple[Pair, ...]:
        """The intervention of an interventional query."""
        return self.outcome[0][0].do if self.outcome else ()

    def __str__(self) -> str:
        if self.interventional:
            left = ", ".join(_term(cv.name, s) for cv, s in self.outcome)
            right = ["do(" + ", ".join(_term(v, s) for v, s in self.do) + ")"] if self.do else []
            right += [_term(cv.name, s) for cv, s in self.given]
            return f"P({left} | {', '.join(right)})" if right else f"P({left})"
        left = ", ".join(_term(cv.label(), s) for cv, s in self.outcome)
        right = ", ".join(_term(cv.label(), s) for cv, s in self.given)
        return f"P({left} | {right})" if right else f"P({left})"


_NAME = r"[A-Za-z_][A-Za-z0-9_.]*"
_SYM = r"[A-Za-z0-9_.+\-*']+"


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses and braces."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "({"
        depth -= ch in ")}"
        if ch == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [p.strip() for p in out if p.strip()]


def _assignments(text: str, where: str) -> list[tuple[str, str | None]]:
    out = []
    for part in _split_top(text, ","):
        m = re.fullmatch(rf"({_NAME})\s*(?:=\s*({_SYM}))?", part)
        if m is None:
            raise QueryError(f"cannot read {part!r} in {where}; expected `name` or `name=value`")
        out.append((m.group(1), m.group(2)))
    return out


def parse_query(text: str, graph: CausalGraph | None = None) -> Query:
    """Read `P(Y | do(X), Z)` or `P(Y_{do(X=x*)} | X=x, Y)`; see docs/identifiability.md for the syntax."""
    m = re.fullmatch(r"\s*P\s*\((.*)\)\s*", text, flags=re.S)
    if m is None:
        raise QueryError(f"query {text!r} must look like P(Y | do(X), Z) or P(Y_{{do(X=x*)}} | X=x, Y)")
    parts = _split_top(m.group(1), "|")
    if len(parts) not in (1, 2):
        raise QueryError(f"query {text!r} has more than one '|'")
    left, right = parts[0], parts[1] if len(parts) == 2 else ""
    do: list[tuple[str, str | None]] = []
    terms: dict[str, list[tuple[str, tuple[tuple[str, str | None], ...], str | None]]] = {"l": [], "r": []}
    for side, chunk in (("l", left), ("r", right)):
        for part in _split_top(chunk, ","):
            dm = re.fullmatch(r"do\s*\((.*)\)", part)
            if dm:
                if side == "l":
                    raise QueryError(f"do(...) belongs after '|' in {text!r}")
                do += _assignments(dm.group(1), part)
                continue
            tm = re.fullmatch(rf"({_NAME})\s*(?:_\s*\{{\s*(?:do\s*\((.*)\)|(.*?))\s*\}})?\s*(?:=\s*({_SYM}))?", part)
            if tm is None:
                raise QueryError(f"cannot read term {part!r} in {text!r}")
            sub = tm.group(2) if tm.group(2) is not None else tm.group(3)
            terms[side].append((tm.group(1), tuple(_assignments(sub, part)) if sub else (), tm.group(4)))
    if not terms["l"]:
        raise QueryError(f"query {text!r} names no outcome")
    counterfactual = any(sub for side in terms.values() for _, sub, _ in side)
    if counterfactual and do:
        raise QueryError(f"query {text!r} mixes do(...) with subscripts; write every term as Y_{{do(X=x)}}")
    names = [n for side in terms.values() for n, _, _ in side] + [n for n, _ in do]
    names += [v for side in terms.values() for _, sub, _ in side for v, _ in sub]
    if graph is not None:
        for n in names:
            if n not in graph:
                raise QueryError(f"query names unknown node {n!r}; graph {graph.name!r} has {list(graph.nodes)}")
    if not counterfactual:
        world = _pairs((v, s or v) for v, s in do)
        out_names = [n for n, _, _ in terms["l"]]
        clash = (set(out_names) | {n for n, _, _ in terms["r"]}) & {v for v, _ in do}
        if clash:
            raise QueryError(f"query {text!r}: {sorted(clash)} both intervened on and observed")
        if len(set(out_names)) != len(out_names):
            raise QueryError(f"query {text!r} repeats an outcome")
        return Query(
            tuple((CfVar(n, world), s or n) for n, _, s in terms["l"]),
            tuple((CfVar(n, world), s or n) for n, _, s in terms["r"]),
            interventional=True,
        )
    used = {s for side in terms.values() for _, _, s in side if s} | {n for n, _, _ in terms["r"]}

    def cf(n: str, sub: tuple[tuple[str, str | None], ...]) -> CfVar:
        return CfVar(n, _pairs((v, s or f"{v}*") for v, s in sub))

    given = tuple((cf(n, sub), s or n) for n, sub, s in terms["r"])
    outcome = []
    for n, sub, s in terms["l"]:
        outcome.append((cf(n, sub), s or _fresh(n, used)))
    return Query(tuple(outcome), given, interventional=False)


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------
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
    g = _ADMG.from_graph(graph)
    return _identify_interventional(g, q) if q.interventional else _identify_counterfactual(g, q)


def _identify_interventional(g: _ADMG, q: Query) -> Identification:
    y = frozenset(cv.name for cv, _ in q.outcome)
    x = frozenset(v for v, _ in q.do)
    z = frozenset(cv.name for cv, _ in q.given)
    kind, algorithm = ("conditional", "IDC") if z else ("interventional", "ID")
    try:
        est = _idc(y, x, z, g)
    except _Hedge as h:
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
    return Identification(str(q), kind, algorithm, "identified", _tidy(_substitute(est, mapping, used)))


def _identify_counterfactual(g: _ADMG, q: Query) -> Identification:
    algorithm = "IDC*" if q.given else "ID*"
    used = {s for _, s in q.outcome + q.given} | {s for cv, _ in q.outcome + q.given for _, s in cv.do}
    try:
        est = _idc_star(g, dict(q.outcome), dict(q.given), used)
    except _CfFail as fail:
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
    used |= _symbols(est)
    experiments = []

    def observational(atom: Prob) -> Expr:
        if not atom.do:
            return atom
        y = frozenset(v for v, _ in atom.event)
        x = frozenset(v for v, _ in atom.do)
        try:
            inner = _id(y, x, Prob(_me(g.nodes)), g)
        except _Hedge:
            experiments.append(str(atom))
            return atom
        return _substitute(inner, {**dict(atom.event), **dict(atom.do)}, used)

    est = _map_atoms(est, observational)
    status = "identified_with_experiments" if experiments else "identified"
    reason = None
    if experiments:
        reason = "needs interventional data for " + ", ".join(experiments) + " (not identifiable from P(V))"
    return Identification(str(q), "counterfactual", algorithm, status, _tidy(est), experiments, reason)


# ----------------------------------------------------------------------------------------------------------
# Verdicts for SCM.counterfactual / evaluate.py, and the CLI
# ----------------------------------------------------------------------------------------------------------
def _family_of(families: Mapping[str, Any] | None, node: str) -> tuple[str | None, Mapping[str, Any] | None]:
    spec = (families or {}).get(node)
    if isinstance(spec, Mapping):
        return spec.get("family"), spec.get("config")
    return spec, None


def _assumptions(nodes: Iterable[str], families: Mapping[str, Any] | None) -> dict[str, str]:
    out = {}
    for n in nodes:
        fam, cfg = _family_of(families, n)
        out[n] = family_assumption(fam, cfg) if fam else "no mechanism family given for this node"
    return out


def _raise_if_strict(result: dict[str, Any], strict: bool) -> None:
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
    answer rests on.
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
    g = _ADMG.from_graph(graph)
    if not factual:
        world = _pairs((n, n) for n in do_nodes)
        q = Query(tuple((CfVar(n, world), n) for n in outcome), tuple((CfVar(n, world), n) for n in given), True)
        result = identify(graph, q).to_dict()
        result.update(graph=graph.name, nodes={}, assumptions={}, warning=None)
        if result["status"] == "not_identified":
            result["warning"] = f"{result['query']} is not identifiable: {result['reason']}"
        _raise_if_strict(result, strict)
        return result
    world = _pairs((n, f"{n}*") for n in do_nodes)
    used = set(factual) | {s for _, s in world}
    delta = tuple((CfVar(n, world), n) for n in given) + tuple((CfVar(n), n) for n in factual)
    asked = [n for n in outcome if n not in do_nodes]

    def cf_query(nodes: Sequence[str]) -> Query:
        return Query(tuple((CfVar(n, world), _fresh(n, set(used))) for n in nodes), delta, False)

    result = identify(graph, cf_query(asked)).to_dict() if asked else {}
    per_node: dict[str, Any] = {}
    descendants = g.descendants(do_nodes)
    for n in outcome:
        if n in do_nodes:
            per_node[n] = {"status": "intervened", "estimand": f"{n} = {n}*", "assumption": None}
            continue
        r = identify(graph, cf_query([n]))
        entry = {"status": r.status, "estimand": None if r.estimand is None else str(r.estimand)}
        if n not in descendants:
            entry["note"] = "not a descendant of the intervention: copied from the factual"
        entry["assumption"] = _assumptions([n], families)[n] if n in r.mechanism_nodes else None
        if r.status == "not_identified":
            entry["path"] = r.path
        per_node[n] = entry
    if not asked:
        result = {"query": "", "kind": "counterfactual", "algorithm": "IDC*", "status": "identified",
                  "identifiable": True, "estimand": "", "experiments": [], "reason": None, "path": [],
                  "mechanism_nodes": []}  # fmt: skip
    image_nodes = [n for n in asked if graph.kinds[n].is_image and n in descendants]
    rests = sorted(set(result["mechanism_nodes"]) | set(image_nodes), key=g.order.index)
    result.update(graph=graph.name, nodes=per_node, assumptions=_assumptions(rests, families), warning=None)
    if result["status"] == "not_identified":
        result["warning"] = f"counterfactual not identifiable: {result['reason']}"
    elif result["status"] == "rests_on_mechanism":
        attrs = [n for n in result["mechanism_nodes"] if not graph.kinds[n].is_image]
        if attrs:
            result["warning"] = (
                f"attribute counterfactuals for {attrs} are not identified by the graph; they rest on the "
                "mechanism families' assumptions (see `assumptions`)"
            )
    _raise_if_strict(result, strict)
    return result


def counterfactual_verdict(
    graph: CausalGraph,
    do: Mapping[str, Any] | Iterable[str],
    families: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Verdict for what `SCM.counterfactual(factual, do)` answers: P(V_{do} | V = factual) for every node."""
    return verdict(graph, do, factual=graph.nodes, families=families, strict=strict)


def load_graph(spec: str | Path) -> CausalGraph:
    """A graph from a YAML path or a name under configs/graph/ (cwd first, then the repository)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return CausalGraph.from_yaml(path)
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = root / "configs" / "graph" / f"{spec}.yaml"
        if candidate.is_file():
            return CausalGraph.from_yaml(candidate)
    raise GraphError(f"graph {spec!r} not found: not a YAML path and no configs/graph/{spec}.yaml")


def _load_families(spec: str) -> dict[str, Any]:
    from imcf.io import read_yaml

    path = Path(spec)
    if path.is_dir():
        path = path / "mechanisms.yaml"
    if not path.is_file():
        raise QueryError(f"families: {spec!r} is neither a mechanisms.yaml nor a run directory holding one")
    return dict(read_yaml(path) or {})


def format_result(result: dict[str, Any]) -> str:
    """Human-readable lines for a verdict dict or Identification.to_dict()."""
    lines = [
        f"query:      {result['query']}",
        f"algorithm:  {result['algorithm']}",
        f"verdict:    {result['status']}",
    ]
    if result.get("estimand"):
        lines.append(f"estimand:   {result['estimand']}")
    if result.get("experiments"):
        lines.append(f"needs:      {', '.join(result['experiments'])}")
    if result.get("reason"):
        lines.append(f"why:        {result['reason']}")
    for node, text in (result.get("assumptions") or {}).items():
        lines.append(f"assumes:    {node}: {text}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m imcf.identify graph=<name|yaml> query="P(...)" [families=<run dir|mechanisms.yaml>]
    [strict=true] [format=json]`."""
    args: dict[str, str] = {}
    for arg in sys.argv[1:] if argv is None else argv:
        key, sep, value = arg.partition("=")
        key = key.removeprefix("identify.")
        if not sep or key not in ("graph", "query", "families", "strict", "format"):
            print(f"error: unknown argument {arg!r}; use graph=, query=, families=, strict=, format=", file=sys.stderr)
            return 2
        args[key] = value
    if "graph" not in args or "query" not in args:
        print('usage: python -m imcf.identify graph=<name|path.yaml> query="P(Y | do(X))"', file=sys.stderr)
        return 2
    try:
        graph = load_graph(args["graph"])
        families = _load_families(args["families"]) if "families" in args else None
        result = identify(graph, args["query"]).to_dict()
        result["graph"] = graph.name
        result["assumptions"] = (
            _assumptions(result["mechanism_nodes"], families) if result["status"] == "rests_on_mechanism" else {}
        )
        strict = args.get("strict", "false").lower() in ("1", "true", "yes")
        _raise_if_strict(result, strict)
    except (GraphError, QueryError, NotIdentifiableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.get("format") == "json" else format_result(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
