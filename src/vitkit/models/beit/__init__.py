"""BEiT (Bao et al. 2022, "BEiT: BERT Pre-Training of Image Transformers"; timm's `Beit`, names and weights),
registered as architecture "beit": model.py the network, configs.py the named models, convert.py Hugging Face
names, export.py the reverse (the bench's transformers and timm peers)."""

import math

from .._limits import check_mlp_ratio
from ..registry import Family, make_config, register_family, square_sizes
from . import convert, export
from .configs import BeitConfig
from .model import Beit

MAX_PATCH_TOKENS = 2**16  # a 256 x 256 patch grid (attention and bias tables grow with its square)


def _from_timm(kwargs: dict):
    kwargs = {k: v for k, v in kwargs.items() if k != "pretrained_cfg"}
    return make_config("beit", **square_sizes(kwargs, ("img_size", "patch_size"), "BEiT"))


def _check_config(data: dict, source: str) -> None:
    check_mlp_ratio(data, source)
    img_size, patch_size = data.get("img_size", 224), data.get("patch_size", 16)
    grid = img_size // patch_size
    if grid * grid > MAX_PATCH_TOKENS:
        side = math.isqrt(MAX_PATCH_TOKENS)
        raise ValueError(f"{source}: img_size={img_size} with patch_size={patch_size} makes {grid * grid} patch "
                         f"tokens; expected at most {MAX_PATCH_TOKENS} (a {side}x{side} grid)")


register_family(Family(
    name="beit", config_cls=BeitConfig, model_cls=Beit,
    from_hf={"beit": convert.from_hf},
    transformers_peer=export.transformers_peer, timm_classes={"Beit": _from_timm}, timm_peer=export.timm_peer,
    config_limits={"patch_size": (1, 1024), "embed_dim": (1, 16384), "depth": (1, 512), "num_heads": (1, 1024)},
    check_config=_check_config,
))

__all__ = ["Beit", "BeitConfig"]
