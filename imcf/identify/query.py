"""Query strings: `P(Y | do(X), Z)` (interventional, answered by ID / IDC) and `P(Y_{do(X=x*)} | X=x, Y)`
(counterfactual, answered by ID* / IDC*); see docs/identifiability.md for the syntax."""

from __future__ import annotations

import re
from dataclasses import dataclass

from imcf.graph import CausalGraph
from imcf.identify.cfgraph import CfVar
from imcf.identify.estimands import Pair, fresh, pairs, term


class QueryError(ValueError):
    """A query string or argument is malformed; the message names the culprit."""


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
            left = ", ".join(term(cv.name, s) for cv, s in self.outcome)
            right = ["do(" + ", ".join(term(v, s) for v, s in self.do) + ")"] if self.do else []
            right += [term(cv.name, s) for cv, s in self.given]
            return f"P({left} | {', '.join(right)})" if right else f"P({left})"
        left = ", ".join(term(cv.label(), s) for cv, s in self.outcome)
        right = ", ".join(term(cv.label(), s) for cv, s in self.given)
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
        world = pairs((v, s or v) for v, s in do)
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
        return CfVar(n, pairs((v, s or f"{v}*") for v, s in sub))

    given = tuple((cf(n, sub), s or n) for n, sub, s in terms["r"])
    outcome = []
    for n, sub, s in terms["l"]:
        outcome.append((cf(n, sub), s or fresh(n, used)))
    return Query(tuple(outcome), given, interventional=False)
