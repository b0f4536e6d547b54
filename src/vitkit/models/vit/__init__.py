"""Vision Transformer family: ViT, DeiT and the foundation-model towers (DINOv2, CLIP, SigLIP) as
timm builds them. model.py is the network, configs.py the named models, hf.py / hf_foundation.py the
Hugging Face converters (hf.py and hf_foundation_export.py the transformers peer), timm.py timm's
arguments both ways, limits.py the bounds on an untrusted config."""

from ..registry import Family, register_family
from . import (
    configs,  # noqa: F401  (registers the named models)
    hf,
    hf_foundation,
    limits,
    timm,
)
from .model import ACT_LAYERS, MLP_LAYERS, VisionTransformer, ViTConfig

register_family(Family(
    name="vit", config_cls=ViTConfig, model_cls=VisionTransformer,
    from_hf={"vit": hf.from_hf, "deit": hf.from_hf, **hf_foundation.CONVERTERS},
    transformers_peer=hf.transformers_peer,
    timm_classes=timm.TIMM_CLASSES, timm_peer=timm.timm_peer,
    config_limits=limits.CONFIG_LIMITS, check_config=limits.check_config,
))

__all__ = ["ACT_LAYERS", "MLP_LAYERS", "VisionTransformer", "ViTConfig"]
