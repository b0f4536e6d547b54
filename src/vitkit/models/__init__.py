"""Model families and the registry that names them."""

from . import (
    convnext,  # noqa: F401  (registers ConvNeXt)
    swin,  # noqa: F401  (registers Swin)
    vit_configs,  # noqa: F401  (registers the named configs)
    vit_hf_foundation,  # noqa: F401  (registers the Hugging Face DINOv2 converter)
)
from .registry import (
    build_model,
    config_from_dict,
    config_to_dict,
    create_model,
    hf_converter,
    hf_model_types,
    list_models,
    make_config,
    model_config,
    register_architecture,
    register_hf_converter,
    register_model,
)
from .vit import VisionTransformer, ViTConfig

__all__ = [
    "build_model", "config_from_dict", "config_to_dict", "create_model", "list_models", "make_config", "model_config",
    "hf_converter", "hf_model_types", "register_architecture", "register_hf_converter", "register_model",
    "VisionTransformer", "ViTConfig",
]
