"""Modular (per c-component) training with Lightning."""

from imcf.training.run import build_scm, train

__all__ = ["build_scm", "train"]
