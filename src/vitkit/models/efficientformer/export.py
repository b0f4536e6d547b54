"""vitkit EfficientFormer -> timm's `EfficientFormer` arguments (the bench's timm peer). There is no
transformers peer: transformers removed EfficientFormer."""

import dataclasses
from typing import Any

from .configs import EfficientFormerConfig

TIMM_GRID = 7  # timm's Attention(resolution=7): the bias grid is fixed


def timm_peer(config) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(timm module, class name, constructor kwargs, build-only kwargs) of timm's `EfficientFormer` equal to
    this one: every config field but vitkit's own `img_size` is timm's argument, and timm's attention grid is
    always 7x7."""
    if not isinstance(config, EfficientFormerConfig):
        raise ValueError(f"no timm EfficientFormer equals a {type(config).__name__} model")
    if config.grid_size() != TIMM_GRID:
        raise ValueError(f"no timm EfficientFormer equals this model: img_size={config.img_size} gives a "
                         f"{config.grid_size()}x{config.grid_size()} attention grid, timm's is always "
                         f"{TIMM_GRID}x{TIMM_GRID}")
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "img_size"}
    return "timm.models.efficientformer", "EfficientFormer", kwargs, {}
