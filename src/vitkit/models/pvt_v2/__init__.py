"""PVTv2, the Pyramid Vision Transformer v2 (Wang et al. 2022; timm's `PyramidVisionTransformerV2`, names and
weights), registered as architecture "pvt_v2": model.py the network, configs.py the named models, convert.py
the original release's and Hugging Face names, export.py the reverse (the bench's transformers and timm
peers)."""

from .._limits import MAX_STAGES, is_number, out_of_range
from ..registry import Family, make_config, register_family
from . import convert, export
from .configs import PvtV2Config
from .model import PyramidVisionTransformerV2

_TIMM_ONLY = ("pretrained_cfg", "norm_layer", "device", "dtype")  # build-time arguments with no config field


def _from_timm(kwargs: dict):
    return make_config("pvt_v2", **{k: v for k, v in kwargs.items() if k not in _TIMM_ONLY})


def _check_config(data: dict, source: str) -> None:
    """mlp_ratios: one positive number (at most 64) or one per stage."""
    if "mlp_ratios" in data:
        value = data["mlp_ratios"]
        values = value if isinstance(value, list | tuple) and 0 < len(value) <= MAX_STAGES else [value]
        if not all(is_number(v) and 0 < v <= 64 for v in values):
            raise out_of_range(data, "mlp_ratios", f"a number in (0, 64] or one per stage (at most {MAX_STAGES})",
                               source)


register_family(Family(
    name="pvt_v2", config_cls=PvtV2Config, model_cls=PyramidVisionTransformerV2,
    from_hf={"pvt_v2": convert.from_hf},
    transformers_peer=export.transformers_peer, timm_classes={"PyramidVisionTransformerV2": _from_timm},
    timm_peer=export.timm_peer,
    config_limits={"depths": (1, 512), "embed_dims": (1, 16384), "num_heads": (1, 1024), "sr_ratios": (1, 64)},
    check_config=_check_config,
))

__all__ = ["PvtV2Config", "PyramidVisionTransformerV2"]
