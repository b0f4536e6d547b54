"""EfficientFormer (Li et al. 2022; timm's `EfficientFormer`, names and weights), registered as architecture
"efficientformer": model.py the network, configs.py the named models (L1, L3, L7), convert.py the original
release's names, export.py timm's arguments (the bench's timm peer). No Hugging Face conversion:
transformers removed EfficientFormer."""

from .._limits import is_int, out_of_range
from ..registry import Family, make_config, register_family
from . import convert, export
from .configs import MAX_GRID, EfficientFormerConfig
from .model import EfficientFormer

# timm's build-time arguments with no config field (layer classes, the registry's cfg, placement)
_TIMM_ONLY = ("pretrained_cfg", "act_layer", "norm_layer", "norm_layer_cl", "device", "dtype")


def _from_timm(kwargs: dict):
    return make_config("efficientformer", **{k: v for k, v in kwargs.items() if k not in _TIMM_ONLY})


def _check_config(data: dict, source: str) -> None:
    """The attention grid (and with it the N x N bias index) bounded before anything is built."""
    size, downsamples, depths = data.get("img_size", 224), data.get("downsamples"), data.get("depths")
    if isinstance(downsamples, list | tuple):
        strides = sum(bool(d) for d in downsamples)
    else:
        strides = len(depths) - 1 if isinstance(depths, list | tuple) else 3
    if is_int(size) and -(-size // 2 ** (2 + strides)) > MAX_GRID:
        raise out_of_range(data, "img_size", f"a size whose attention grid is at most {MAX_GRID}x{MAX_GRID} "
                                             f"(img_size <= {MAX_GRID * 2 ** (2 + strides)})", source)


register_family(Family(
    name="efficientformer", config_cls=EfficientFormerConfig, model_cls=EfficientFormer,
    timm_classes={"EfficientFormer": _from_timm}, timm_peer=export.timm_peer,
    config_limits={"depths": (1, 512), "embed_dims": (1, 16384), "num_vit": (1, 512), "pool_size": (1, 63)},
    check_config=_check_config,
))

__all__ = ["EfficientFormer", "EfficientFormerConfig", "convert", "export"]
