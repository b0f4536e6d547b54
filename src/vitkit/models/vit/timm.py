"""timm's `VisionTransformer` / `VisionTransformerDistilled` arguments to vitkit's ViT config, and back (the
bench's timm peer). Parameter names are timm's already, so weights need no renaming."""

from functools import partial
from typing import Any

from torch import nn

from .model import ViTConfig

# timm arguments that only choose an implementation detail vitkit fixes, with the values vitkit has.
IGNORED_IF = {"weight_init": ("", "skip"), "pos_embed": ("learn",), "dynamic_img_pad": (False,),
              "patch_drop_rate": (0.0,), "fix_init": (False,), "embed_norm_layer": (None,), "norm_layer": (None,)}


def timm_peer(config) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(timm module, class name, constructor kwargs, build-only kwargs) of the timm model equal to a vitkit
    ViT; the kwargs are the inverse of `config_from_timm`, the build-only ones objects timm takes (the norm
    layer with vitkit's eps). A ValueError names what timm's class cannot express."""
    if not isinstance(config, ViTConfig) or config.conv_stem:
        raise ValueError("no timm VisionTransformer equals this model" + (" (it has a conv stem)" if
                                                                          getattr(config, "conv_stem", ()) else ""))
    if config.global_pool not in ("token", "avg", "max", "avgmax", "map", ""):
        raise ValueError(f"timm's VisionTransformer has no global_pool={config.global_pool!r}")
    names = ("img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth", "num_heads",
             "mlp_ratio", "qkv_bias", "qk_norm", "init_values", "class_token", "reg_tokens", "no_embed_class",
             "pre_norm", "final_norm", "fc_norm", "dynamic_img_size")
    kwargs = {name: getattr(config, name) for name in names}
    if config.act_layer != "gelu":
        kwargs["act_layer"] = config.act_layer
    if config.mlp_layer != "mlp":
        kwargs["mlp_layer"] = config.mlp_layer
    build_only = {"norm_layer": partial(nn.LayerNorm, eps=config.norm_eps)}
    if config.distilled:
        return "timm.models.deit", "VisionTransformerDistilled", kwargs, build_only
    return "timm.models.vision_transformer", "VisionTransformer", kwargs, build_only


def config_from_timm(kwargs: dict[str, Any], distilled: bool = False) -> ViTConfig:
    """vitkit's ViTConfig for timm's constructor arguments (a fixture's or a checkpoint's)."""
    from ..registry import make_config, square_sizes

    kwargs = dict(kwargs)
    for name in ("act_layer", "mlp_layer"):
        if kwargs.get(name) is None:
            kwargs.pop(name, None)
    for name, allowed in IGNORED_IF.items():
        if name in kwargs:
            value = kwargs.pop(name)
            if value not in allowed:
                raise ValueError(f"timm argument {name}={value!r} is not supported by vitkit (supported: {allowed})")
    kwargs = square_sizes(kwargs, ("img_size", "patch_size"), "ViT")
    return make_config("vit", **kwargs, **({"distilled": True} if distilled else {}))


TIMM_CLASSES = {"VisionTransformer": config_from_timm,
                "VisionTransformerDistilled": lambda kwargs: config_from_timm(kwargs, distilled=True)}
