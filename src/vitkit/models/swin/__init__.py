"""Swin Transformer V1 (timm's `SwinTransformer`, names and weights), registered as architecture "swin"."""

from . import convert  # noqa: F401  (registers the Hugging Face converter)
from .configs import SwinConfig
from .model import SwinTransformer

__all__ = ["SwinConfig", "SwinTransformer"]
