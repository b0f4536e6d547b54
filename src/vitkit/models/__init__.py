"""Model families and the registry that names them. Each family lives in its own folder and registers
itself (`Family`): its config and model classes, named configs and weight converters."""

from . import (
    beit,  # noqa: F401  (registers BEiT)
    cait,  # noqa: F401  (registers CaiT)
    cct,  # noqa: F401  (registers CCT, compact convolutional transformers)
    convnext,  # noqa: F401  (registers ConvNeXt V1/V2)
    efficientformer,  # noqa: F401  (registers EfficientFormer V1)
    metaformer,  # noqa: F401  (registers PoolFormer V1/V2, ConvFormer, CAFormer)
    pvt_v2,  # noqa: F401  (registers PVTv2)
    resnet,  # noqa: F401  (registers small CIFAR-style ResNets, the zoo's CNN reference)
    swin,  # noqa: F401  (registers Swin V1)
    vit,  # noqa: F401  (registers ViT, DeiT, DINOv2, CLIP and SigLIP towers)
    xcit,  # noqa: F401  (registers XCiT)
)
from ._protocol import Backbone, FeatureInfo, InputSpec, TokenSequence, input_spec_of
from .registry import (
    Family,
    build_model,
    config_from_dict,
    config_to_dict,
    create_model,
    families,
    family_named,
    family_of,
    hf_converter,
    hf_model_types,
    list_models,
    make_config,
    model_config,
    pretrained_cfg,
    register_family,
    register_model,
)
from .vit import VisionTransformer, ViTConfig

__all__ = [
    "Backbone", "Family", "FeatureInfo", "InputSpec", "TokenSequence", "build_model", "config_from_dict",
    "config_to_dict", "create_model", "families", "family_named", "family_of", "hf_converter", "hf_model_types",
    "input_spec_of", "list_models", "make_config", "model_config", "pretrained_cfg", "register_family",
    "register_model", "VisionTransformer", "ViTConfig",
]
