"""ConvNeXt V1 / V2 (timm's names); importing this registers the architecture, named models and the Hugging
Face converter."""

from . import convert  # noqa: F401  (registers the Hugging Face converter)
from .configs import ConvNeXtConfig
from .model import ConvNeXt

__all__ = ["ConvNeXt", "ConvNeXtConfig"]
