"""Counterfactual metrics: one metric object per file (`base.Metric`: declares what it reads, updates per batch,
computes its results), registered in `imcf.registry.METRICS` in report order, with the pure tensor functions it
is built from beside it. The models they read with (predictors, the minimality VAE, feature networks) live in
`imcf.evaluators`; the loop that feeds them is `imcf.evaluation`.
"""

# imported in report order: the registry's order is the report's
# ruff: noqa: I001
from imcf.metrics import (  # noqa: F401
    effectiveness,
    measured,
    composition,
    reversibility,
    realism,
    minimality,
    truth,
)

__all__ = ["composition", "effectiveness", "measured", "minimality", "realism", "reversibility", "truth"]
