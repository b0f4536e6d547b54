"""ConvNeXt V1 / V2 (timm's `ConvNeXt`, names and weights), registered as architecture "convnext": model.py
the network, configs.py the named models, convert.py Hugging Face names, export.py the reverse (the bench's
transformers and timm peers)."""

from .._limits import check_mlp_ratio
from ..registry import Family, make_config, register_family
from . import convert, export
from .configs import ConvNeXtConfig
from .model import ConvNeXt


def _from_timm(kwargs: dict):
    return make_config("convnext", **{k: v for k, v in kwargs.items() if k != "pretrained_cfg"})


register_family(Family(
    name="convnext", config_cls=ConvNeXtConfig, model_cls=ConvNeXt,
    from_hf={"convnext": convert.from_hf, "convnextv2": convert.from_hf},
    transformers_peer=export.transformers_peer, timm_classes={"ConvNeXt": _from_timm}, timm_peer=export.timm_peer,
    config_limits={"patch_size": (1, 1024), "depths": (0, 512), "dims": (1, 16384), "kernel_sizes": (1, 63)},
    check_config=check_mlp_ratio,
))

__all__ = ["ConvNeXt", "ConvNeXtConfig"]
