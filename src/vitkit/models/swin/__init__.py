"""Swin Transformer V1 (timm's `SwinTransformer`, names and weights), registered as architecture "swin":
model.py the network, configs.py the named models, convert.py older timm layouts and Hugging Face names,
export.py the reverse (the bench's transformers and timm peers)."""

from .._limits import check_int_limits, check_mlp_ratio
from ..registry import Family, make_config, register_family, square_sizes
from . import convert, export
from .configs import SwinConfig
from .model import SwinTransformer


def _from_timm(kwargs: dict):
    return make_config("swin", **square_sizes(kwargs, ("img_size", "window_size"), "Swin"))


def _check_config(data: dict, source: str) -> None:
    check_mlp_ratio(data, source)
    check_int_limits(data, {"head_dim": (1, 4096)}, source, optional=("head_dim",))


register_family(Family(
    name="swin", config_cls=SwinConfig, model_cls=SwinTransformer,
    from_hf={"swin": convert.from_hf},
    transformers_peer=export.transformers_peer, timm_classes={"SwinTransformer": _from_timm},
    timm_peer=export.timm_peer,
    config_limits={"patch_size": (1, 1024), "embed_dim": (1, 16384), "depths": (0, 512), "num_heads": (1, 1024),
                   "window_size": (1, 1024)},
    check_config=_check_config,
))

__all__ = ["SwinConfig", "SwinTransformer"]
