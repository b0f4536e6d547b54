"""The timm peer of a family whose config fields are timm's constructor arguments of the same names, except
vitkit's `norm_eps` and `act_layer` (a string), which timm takes as layer objects (CaiT, XCiT)."""

import dataclasses
from functools import partial
from typing import Any

from torch import nn

from ..layers import ACT_LAYERS


def timm_peer_of(config, config_cls: type, module: str, class_name: str) -> tuple[str, str, dict, dict]:
    """(timm module, class name, constructor kwargs, build-only kwargs) of timm's `class_name` equal to
    `config`: every field but `norm_eps` and `act_layer` as it is, those two as the layer objects timm takes."""
    if not isinstance(config, config_cls):
        raise ValueError(f"no timm {class_name} equals a {type(config).__name__} model")
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name not in ("norm_eps", "act_layer")}
    build_only: dict[str, Any] = {"norm_layer": partial(nn.LayerNorm, eps=config.norm_eps)}
    if config.act_layer != "gelu":
        build_only["act_layer"] = ACT_LAYERS[config.act_layer]
    return module, class_name, kwargs, build_only


def config_from_timm_args(kwargs: dict[str, Any], architecture: str, size_keys: tuple[str, ...], label: str):
    """The vitkit config of `architecture` for timm's constructor `kwargs` (plain arguments; timm's
    layer-class arguments have no equivalent here and are named in the error)."""
    from .registry import make_config, square_sizes

    kwargs = dict(kwargs)
    kwargs.pop("pretrained_cfg", None)
    return make_config(architecture, **square_sizes(kwargs, size_keys, label))
