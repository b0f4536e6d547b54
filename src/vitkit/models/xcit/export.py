"""vitkit XCiT -> timm's `Xcit` arguments (the bench's timm peer). There is no transformers XCiT, so no
transformers peer."""

import dataclasses
from functools import partial
from typing import Any

from torch import nn

from ...layers import ACT_LAYERS
from .configs import XcitConfig


def timm_peer(config) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(timm module, class name, constructor kwargs, build-only kwargs) of timm's `Xcit` equal to this one:
    every config field but vitkit's `norm_eps` and `act_layer` is timm's argument of the same name; those
    two go as the layer objects timm takes."""
    if not isinstance(config, XcitConfig):
        raise ValueError(f"no timm Xcit equals a {type(config).__name__} model")
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name not in ("norm_eps", "act_layer")}
    build_only: dict[str, Any] = {"norm_layer": partial(nn.LayerNorm, eps=config.norm_eps)}
    if config.act_layer != "gelu":
        build_only["act_layer"] = ACT_LAYERS[config.act_layer]
    return "timm.models.xcit", "Xcit", kwargs, build_only


def config_from_timm(kwargs: dict[str, Any]) -> XcitConfig:
    """vitkit's XcitConfig for timm's `Xcit(**kwargs)` (plain arguments; timm's layer-class arguments have
    no equivalent here and are named in the error)."""
    from ..registry import make_config, square_sizes

    kwargs = dict(kwargs)
    kwargs.pop("pretrained_cfg", None)
    return make_config("xcit", **square_sizes(kwargs, ("img_size",), "XCiT"))
