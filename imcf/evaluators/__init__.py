"""Models the evaluator trains (or loads) to read counterfactuals with: anti-causal predictors
(`predictors.py`), the minimality VAE (`minimality_vae.py`), pretrained feature networks (`features.py`), all
cached per dataset by one recipe (`cache.py`). The metrics (`imcf.metrics`) use them; they never import a metric.
"""
