"""Estimands: symbolic expressions in (interventional) distributions, their simplification, printing and value.

`Prob(event, given, do)` is one P term, each entry a (variable, value symbol) pair; a symbol equal to the
variable's name means "its value". The constructors `product_of`, `sum_over` and `ratio_of` apply only
identities, so the estimand stays equal to what the algorithm derived while it reads like the textbook one.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Pair = tuple[str, str]  # (variable, value symbol); the symbol equal to the variable name means "its value"


class Expr(ABC):
    """A symbolic estimand; `str(e)` renders it, `evaluate` computes it from a distribution oracle."""

    @abstractmethod
    def free(self) -> set[str]:
        """The variables the estimand leaves free."""

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


def pairs(items: Iterable[Pair]) -> tuple[Pair, ...]:
    """Sorted, duplicate-free pairs (the canonical form of an event)."""
    return tuple(sorted(set(items)))


def product_of(factors: Iterable[Expr]) -> Expr:
    """Product, flattened; a zero factor makes it zero, ones drop out."""
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


def sum_over(over: Iterable[Pair], body: Expr) -> Expr:
    """Sum with the simplifications that keep estimands readable (each one an identity)."""
    over = {p for p in over if p[1] in body.free()}
    if not over or isinstance(body, (One, Zero)):
        return body
    if isinstance(body, Sum):
        return sum_over(over | set(body.over), body.body)
    syms = {s for _, s in over}
    if isinstance(body, Prob):
        if not syms & {s for _, s in body.given + body.do}:
            rest = tuple(p for p in body.event if p[1] not in syms)
            return Prob(rest, body.given, body.do) if rest else One()
        return Sum(pairs(over), body)
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
            return product_of(factors)
        inner = product_of(inside)
        if isinstance(inner, Prob):
            return product_of([*outside, sum_over(over, inner)])
        return product_of([*outside, Sum(pairs(over), inner)])
    return Sum(pairs(over), body)


def ratio_of(num: Expr, den: Expr) -> Expr:
    """num / den, with the cancellations that are identities."""
    if isinstance(den, One):
        return num
    if isinstance(num, Zero):
        return num
    if num == den:
        return One()
    if isinstance(num, Product) and den in num.factors:  # A B / A = B
        rest = list(num.factors)
        rest.remove(den)
        return product_of(rest)
    if isinstance(num, Prob) and isinstance(den, Prob) and num.given == den.given and num.do == den.do:
        if set(den.event) < set(num.event):
            rest = tuple(p for p in num.event if p not in den.event)
            return Prob(rest, pairs(num.given + den.event), num.do)
    return Ratio(num, den)


def fresh(var: str, used: set[str]) -> str:
    """A symbol for `var` not in `used` (primes appended), added to `used`."""
    sym = var
    while sym in used:
        sym += "'"
    used.add(sym)
    return sym


def substitute(expr: Expr, mapping: Mapping[str, str], used: set[str]) -> Expr:
    """Rename free symbols by `mapping`; bound symbols that would clash are renamed fresh."""
    if isinstance(expr, (One, Zero)):
        return expr
    if isinstance(expr, Indicator):
        return Indicator(mapping.get(expr.a, expr.a), mapping.get(expr.b, expr.b))
    if isinstance(expr, Prob):

        def m(ps: tuple[Pair, ...]) -> tuple[Pair, ...]:
            return pairs((v, mapping.get(s, s)) for v, s in ps)

        return Prob(m(expr.event), m(expr.given), m(expr.do))
    if isinstance(expr, Product):
        return product_of(substitute(f, mapping, used) for f in expr.factors)
    if isinstance(expr, Ratio):
        return ratio_of(substitute(expr.num, mapping, used), substitute(expr.den, mapping, used))
    if isinstance(expr, Sum):
        inner = {k: v for k, v in mapping.items() if k not in {s for _, s in expr.over}}
        over = []
        for var, s in expr.over:
            new = fresh(var, used) if s in inner.values() else s
            used.add(new)
            if new != s:
                inner[s] = new
            over.append((var, new))
        return sum_over(over, substitute(expr.body, inner, used))
    raise TypeError(type(expr))


def tidy(expr: Expr, taken: set[str] | None = None) -> Expr:
    """Rename bound symbols that shadow a symbol in scope, so a printed estimand reads unambiguously."""
    taken = set(expr.free()) if taken is None else taken
    if isinstance(expr, Sum):
        mapping, over = {}, []
        for var, s in expr.over:
            new = fresh(var, taken) if s in taken else s
            taken.add(new)
            if new != s:
                mapping[s] = new
            over.append((var, new))
        body = substitute(expr.body, mapping, set(taken)) if mapping else expr.body
        return Sum(pairs(over), tidy(body, set(taken)))
    if isinstance(expr, Product):
        return Product(tuple(tidy(f, set(taken)) for f in expr.factors))
    if isinstance(expr, Ratio):
        return Ratio(tidy(expr.num, set(taken)), tidy(expr.den, set(taken)))
    return expr


def term(var: str, sym: str) -> str:
    """`var` or `var=sym` as it prints."""
    return var if sym == var else f"{var}={sym}"


def _render(e: Expr, wrap: bool = False) -> str:
    if isinstance(e, One):
        return "1"
    if isinstance(e, Zero):
        return "0"
    if isinstance(e, Indicator):
        return f"1[{e.a} = {e.b}]"
    if isinstance(e, Prob):
        left = ", ".join(term(v, s) for v, s in e.event)
        right = []
        if e.do:
            right.append("do(" + ", ".join(term(v, s) for v, s in e.do) + ")")
        right += [term(v, s) for v, s in e.given]
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


def own_values(names: Iterable[str]) -> tuple[Pair, ...]:
    """Each variable at its own value: ((n, n), ...)."""
    return pairs((n, n) for n in names)


def map_atoms(expr: Expr, fn: Callable[[Prob], Expr]) -> Expr:
    """The expression with every P term replaced by fn(term)."""
    if isinstance(expr, Prob):
        return fn(expr)
    if isinstance(expr, Product):
        return product_of(map_atoms(f, fn) for f in expr.factors)
    if isinstance(expr, Sum):
        return sum_over(expr.over, map_atoms(expr.body, fn))
    if isinstance(expr, Ratio):
        return ratio_of(map_atoms(expr.num, fn), map_atoms(expr.den, fn))
    return expr


def symbols(expr: Expr) -> set[str]:
    """Every symbol in the expression, free or bound."""
    out = set(expr.free())
    if isinstance(expr, Sum):
        out |= {s for _, s in expr.over} | symbols(expr.body)
    for child in getattr(expr, "factors", ()) + tuple(getattr(expr, a) for a in ("num", "den") if hasattr(expr, a)):
        out |= symbols(child)
    return out
