"""Build the vitkit model equal to a timm model, from timm's class name and constructor arguments."""

from typing import Any

import torch
from torch import nn

from ..models import build_model, make_config

# timm arguments that only choose an implementation detail vitkit fixes, with the value vitkit has.
_IGNORED_IF = {"weight_init": ("", "skip"), "pos_embed": ("learn",), "dynamic_img_size": (False,),
               "dynamic_img_pad": (False,), "patch_drop_rate": (0.0,), "fix_init": (False,),
               "embed_norm_layer": (None,), "norm_layer": (None,), "act_layer": (None,)}
_TIMM_CLASSES = {"VisionTransformer": ("vit", {}), "VisionTransformerDistilled": ("vit", {"distilled": True})}


def config_from_timm(timm_class: str, kwargs: dict[str, Any]):
    if timm_class not in _TIMM_CLASSES:
        raise ValueError(f"timm class {timm_class!r} is not supported; supported: {sorted(_TIMM_CLASSES)}")
    architecture, fixed = _TIMM_CLASSES[timm_class]
    kwargs = dict(kwargs)
    for name, allowed in _IGNORED_IF.items():
        if name in kwargs:
            value = kwargs.pop(name)
            if value not in allowed:
                raise ValueError(f"timm argument {name}={value!r} is not supported by vitkit (supported: {allowed})")
    for name in ("img_size", "patch_size"):
        if isinstance(kwargs.get(name), list | tuple):
            h, w = kwargs[name]
            if h != w:
                raise ValueError(f"vitkit supports square {name} only, got {kwargs[name]}")
            kwargs[name] = h
    return make_config(architecture, **{**kwargs, **fixed})


def from_timm(timm_class: str, kwargs: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None,
              strict: bool = True) -> nn.Module:
    """The vitkit model equal to timm's `timm_class(**kwargs)`, with a timm state dict loaded if given."""
    model = build_model(config_from_timm(timm_class, kwargs))
    if state_dict is not None:
        from .loading import load_state_dict

        load_state_dict(model, state_dict, strict=strict, source=f"timm {timm_class} state dict")
    return model


def timm_kwargs_from(config) -> tuple[str, dict[str, Any]]:
    """timm's class name and constructor arguments for a vitkit ViT; the inverse of `config_from_timm`."""
    from ..models.vit import ViTConfig

    if not isinstance(config, ViTConfig) or config.conv_stem:
        raise ValueError("no timm VisionTransformer equals this model" + (" (it has a conv stem)" if
                                                                          getattr(config, "conv_stem", ()) else ""))
    if config.global_pool not in ("token", "avg", "max", "avgmax", ""):
        raise ValueError(f"timm's VisionTransformer has no global_pool={config.global_pool!r}")
    names = ("img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth", "num_heads",
             "mlp_ratio", "qkv_bias", "qk_norm", "init_values", "class_token", "reg_tokens", "no_embed_class",
             "pre_norm", "final_norm", "fc_norm")
    kwargs = {name: getattr(config, name) for name in names}
    if config.act_layer != "gelu":
        kwargs["act_layer"] = config.act_layer
    return ("VisionTransformerDistilled" if config.distilled else "VisionTransformer"), kwargs


def to_timm(model) -> nn.Module:
    """The timm model equal to a vitkit ViT/DeiT, with its weights (the names are the same), in eval mode.
    Raises ImportError when timm does not import (it needs torchvision)."""
    from functools import partial

    import timm.models.deit
    import timm.models.vision_transformer

    class_name, kwargs = timm_kwargs_from(model.config)
    module = timm.models.deit if class_name == "VisionTransformerDistilled" else timm.models.vision_transformer
    peer = getattr(module, class_name)(**kwargs, norm_layer=partial(nn.LayerNorm, eps=model.config.norm_eps))
    peer.load_state_dict(model.state_dict())
    return peer.eval()
