"""ID (Shpitser & Pearl 2006) for P(Y | do(X)), with Tian & Pearl's c-component factorisation, and IDC
(Shpitser & Pearl 2006b) for P(Y | do(X), Z).

The current distribution is carried through the recursion as an estimand, so line 7's Q[S'] stays right;
a hedge (line 5) raises `Hedge`, which names the two c-components that make the effect unidentifiable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imcf.identify.estimands import Expr, Prob, own_values, product_of, ratio_of, sum_over
from imcf.identify.graphs import GraphView


@dataclass
class Hedge(Exception):
    """ID line 5: `forest` and `subforest` are c-components; the treatments cut into `forest` only."""

    forest: frozenset[str]
    subforest: frozenset[str]
    graph: GraphView
    treatments: frozenset[str]
    outcomes: frozenset[str]

    def path(self) -> list[str]:
        """A bidirected path from a treatment in the forest to an outcome in the subforest (or any of it)."""
        tr = self.treatments & self.forest
        return self.graph.bidirected_path(tr, self.outcomes & self.subforest) or self.graph.bidirected_path(
            tr, self.subforest
        )


def _is_joint(P: Expr) -> bool:
    return isinstance(P, Prob) and not P.given and not P.do


def _conditional(P: Expr, v: str, pre: Sequence[str], g: GraphView) -> Expr:
    """P(v | pre) computed from the current distribution P over g's nodes."""
    if _is_joint(P):
        keep = list(pre)
        for w in reversed(pre):  # drop conditioning variables that the graph makes irrelevant
            rest = [u for u in keep if u != w]
            if g.d_separated({v}, {w}, rest):
                keep = rest
        return Prob(own_values([v]), own_values(keep))
    num = sum_over(own_values(g.nodes - set(pre) - {v}), P)
    den = sum_over(own_values(g.nodes - set(pre)), P)
    return ratio_of(num, den)


def identify_effect(y: frozenset[str], x: frozenset[str], P: Expr, g: GraphView) -> Expr:
    """ID: P(y | do(x)) as an estimand in the distribution `P` over g's nodes; raises Hedge when it fails."""
    v = g.nodes
    if not x:  # line 1
        return sum_over(own_values(v - y), P)
    an = g.ancestors(y)
    if v - an:  # line 2
        return identify_effect(y, x & an, sum_over(own_values(v - an), P), g.subgraph(an))
    g_xbar_an = g.cut_incoming(x).ancestors(y)
    w = (v - x) - g_xbar_an
    if w:  # line 3
        return identify_effect(y, x | w, P, g)
    districts = g.subgraph(v - x).districts()
    if len(districts) > 1:  # line 4
        return sum_over(own_values(v - (y | x)), product_of(identify_effect(s, v - s, P, g) for s in districts))
    (s,) = districts
    whole = g.districts()
    if len(whole) == 1:  # line 5: a hedge
        raise Hedge(v, s, g, x, y)
    order = list(g.order)
    if s in whole:  # line 6
        return sum_over(
            own_values(s - y), product_of(_conditional(P, n, order[: order.index(n)], g) for n in order if n in s)
        )
    (sp,) = [d for d in whole if s < d]  # line 7
    factors = [_conditional(P, n, order[: order.index(n)], g) for n in order if n in sp]
    return identify_effect(y, x & sp, product_of(factors), g.subgraph(sp))


def identify_conditional(y: frozenset[str], x: frozenset[str], z: frozenset[str], g: GraphView) -> Expr:
    """IDC: P(y | do(x), z) from P(V); rule 2 moves each z it can into the intervention first."""
    for zi in sorted(z, key=g.order.index):
        if g.d_separated(y, {zi}, x | (z - {zi}), cut_in=x, cut_out={zi}):  # rule 2: observe -> do
            return identify_conditional(y, x | {zi}, z - {zi}, g)
    joint = Prob(own_values(g.nodes))
    P = identify_effect(y | z, x, joint, g)
    return ratio_of(P, sum_over(own_values(y), P)) if z else P
