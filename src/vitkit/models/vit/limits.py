"""Bounds on an untrusted ViT config.json (see models/_limits.py): sizes, the conv stem and the token count;
pos_embed_interp one of the known ways."""

import math
from typing import Any

from ...layers.pos_embed import POS_EMBED_INTERP
from .._limits import check_mlp_ratio, is_int, out_of_range

CONFIG_LIMITS = {"patch_size": (1, 1024), "embed_dim": (1, 16384), "depth": (1, 512), "num_heads": (1, 1024),
                 "reg_tokens": (0, 1024)}
MAX_PATCH_TOKENS = 2**16  # a 256 x 256 patch grid
MAX_CONV_STAGES = 8


def check_config(data: dict[str, Any], source: str) -> None:
    check_mlp_ratio(data, source)
    interp = data.get("pos_embed_interp", "timm")  # absent in configs saved before the field: timm's way
    if not isinstance(interp, str) or interp not in POS_EMBED_INTERP:
        raise out_of_range(data, "pos_embed_interp", f"one of {sorted(POS_EMBED_INTERP)}", source)
    for key, allowed in (("conv_stem", "channel counts from 1 to 16384"), ("conv_stem_strides", "strides 1 or 2")):
        value = data.get(key, ())
        low, high = (1, 16384) if key == "conv_stem" else (1, 2)
        if not (isinstance(value, list | tuple) and len(value) <= MAX_CONV_STAGES
                and all(is_int(v) and low <= v <= high for v in value)):
            raise out_of_range(data, key, f"a list of at most {MAX_CONV_STAGES} {allowed}", source)
    img_size, conv_stem = data.get("img_size", 224), data.get("conv_stem", ())
    if conv_stem:
        stride, grid = None, img_size
        for s in data.get("conv_stem_strides") or (2,) * len(conv_stem):
            grid = (grid + s - 1) // s
    else:
        stride = data.get("patch_size", 16)
        grid = img_size // stride
    if grid * grid > MAX_PATCH_TOKENS:
        made_by = f"patch_size={stride}" if stride else "its conv_stem"
        side = math.isqrt(MAX_PATCH_TOKENS)
        raise ValueError(f"{source}: img_size={img_size} with {made_by} makes {grid * grid} patch tokens; expected "
                         f"at most {MAX_PATCH_TOKENS} (a {side}x{side} grid)")
