"""Counterfactual metrics: pure functions of tensors (effectiveness, composition, reversibility, realism,
minimality, ground truth), the anti-causal predictors they read attributes with, and their caches.

Importing this package registers the metric functions in `imcf.registry.METRICS` by name.
"""

from imcf.metrics import composition, effectiveness, minimality, realism, reversibility, truth  # noqa: F401

__all__ = ["composition", "effectiveness", "minimality", "realism", "reversibility", "truth"]
