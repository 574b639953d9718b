"""Shared neural building blocks (parent encoders, conv encoders/decoders)."""

from imcf.nn.parents import ParentEncoder

__all__ = ["ParentEncoder"]
