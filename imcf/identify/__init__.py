"""Identifiability of interventional and counterfactual queries on a CausalGraph (ID, IDC, ID*, IDC*).

A query is answered from the graph alone when an identification algorithm turns it into an estimand: an
expression in the observational distribution P(V) (or, for counterfactuals, in interventional distributions
P(. | do(.)) that a randomized experiment would give). When the algorithm fails, the counterfactual the SCM
returns rests on something the graph does not say: the mechanism family's assumption about its own noise
(`Mechanism.abduction_assumption`), or, worse, a hidden confounder that no per-node mechanism can pin down.

Modules, in the order they build on each other (see docs/identifiability.md for why y0 is not wrapped):
- `graphs`: the view of a CausalGraph the algorithms slice (sub-graphs, cut arrows, d-separation);
- `estimands`: symbolic expressions, their simplification, printing and numerical value (`evaluate`);
- `interventional`: ID (Shpitser & Pearl 2006) and IDC (2006b);
- `cfgraph`, `counterfactual`: the counterfactual graph (make-cg) and ID* / IDC* (Shpitser & Pearl 2007/2008);
- `query`: the query syntax; `identification`: `identify(graph, "P(...)")`;
- `verdict`: `verdict(...)` and `counterfactual_verdict(...)` (JSON-serialisable, for SCM and evaluate.py);
- `cli`: `python -m imcf.identify graph=... query=...`.
"""

from imcf.identify.cfgraph import CfVar
from imcf.identify.cli import format_result, load_graph, main
from imcf.identify.estimands import Expr, evaluate
from imcf.identify.identification import STATUSES, Identification, identify
from imcf.identify.query import Query, QueryError, parse_query
from imcf.identify.verdict import NotIdentifiableError, counterfactual_verdict, family_assumption, verdict

__all__ = [
    "STATUSES",
    "CfVar",
    "Expr",
    "Identification",
    "NotIdentifiableError",
    "Query",
    "QueryError",
    "counterfactual_verdict",
    "evaluate",
    "family_assumption",
    "format_result",
    "identify",
    "load_graph",
    "main",
    "parse_query",
    "verdict",
]
