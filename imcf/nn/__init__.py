"""Shared neural building blocks (parent encoders, conv encoders/decoders)."""

from imcf.nn.conv import ConvDecoder, ConvEncoder, ResBlock, broadcast_cond, check_image_shape
from imcf.nn.likelihood import ImageLikelihood
from imcf.nn.parents import ParentEncoder

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "ImageLikelihood",
    "ParentEncoder",
    "ResBlock",
    "broadcast_cond",
    "check_image_shape",
]
