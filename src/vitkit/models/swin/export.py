"""vitkit Swin -> the equal transformers model (`SwinForImageClassification`, or `SwinModel` without a
classifier): the bench's transformers peer, the reverse of convert.py's `from_hf`. Also timm's
`SwinTransformer` arguments (the timm peer)."""

import dataclasses
import re
from typing import Any

import torch

from .configs import SwinConfig

HF_NORM_EPS = 1e-5  # vitkit's Swin norms: torch's LayerNorm default, transformers' `layer_norm_eps` default

# (vitkit name inside a block, transformers name inside `encoder.layers.i.blocks.j.`)
_BLOCK_NAMES = [
    ("norm1.", "layernorm_before."),
    ("norm2.", "layernorm_after."),
    ("attn.relative_position_bias_table", "attention.self.relative_position_bias_table"),
    ("attn.proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
]
_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.*)$")


def hf_config_from(config) -> dict:
    """The Hugging Face Swin config equal to a vitkit Swin, or a ValueError naming what has none."""
    c = config
    if not isinstance(c, SwinConfig):
        raise ValueError(f"no transformers Swin equals a {type(c).__name__} model")
    clamped = [i for i, res in enumerate(c.stage_resolutions()) if res < c.window_size]
    odd_heads = c.head_dim is not None and any(d // h != c.head_dim or d % h
                                               for d, h in zip(c.embed_dims, c.num_heads, strict=True))
    unsupported = [name for name, differs in [
        (f"act_layer={c.act_layer!r}", c.act_layer != "gelu"),
        (f"global_pool={c.global_pool!r}", c.global_pool != "avg"),
        (f"head_dim={c.head_dim} (transformers: stage width / num_heads)", odd_heads),
        (f"window_size {c.window_size} larger than stage {clamped[0] if clamped else 0}'s grid (transformers sizes "
         "the relative position table for the full window)", bool(clamped)),
    ] if differs]
    if unsupported:
        raise ValueError(f"no transformers Swin equals this model: it has {', '.join(unsupported)}")
    return {
        "model_type": "swin", "architectures": ["SwinForImageClassification" if c.num_classes else "SwinModel"],
        "image_size": c.img_size, "patch_size": c.patch_size, "num_channels": c.in_chans, "embed_dim": c.embed_dim,
        "depths": list(c.depths), "num_heads": list(c.num_heads), "window_size": c.window_size,
        "mlp_ratio": c.mlp_ratio, "qkv_bias": c.qkv_bias, "hidden_act": "gelu", "layer_norm_eps": HF_NORM_EPS,
        "use_absolute_embeddings": False, "drop_path_rate": c.drop_path_rate,
        "id2label": {str(i): str(i) for i in range(c.num_classes)},
    }


def _hf_name(key: str) -> str:
    for ours, hf in (("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
                     ("patch_embed.norm.", "embeddings.norm."), ("norm.", "layernorm.")):
        if key.startswith(ours):
            return hf + key.removeprefix(ours)
    m = re.match(r"^layers\.(\d+)\.downsample\.(.*)$", key)
    if m:  # transformers merges patches at the end of the stage before
        return f"encoder.layers.{int(m[1]) - 1}.downsample.{m[2]}"
    m = _BLOCK.match(key)
    if m:
        for ours, hf in _BLOCK_NAMES:
            if m[3].startswith(ours):
                return f"encoder.layers.{m[1]}.blocks.{m[2]}.{hf}{m[3].removeprefix(ours)}"
    raise ValueError(f"vitkit Swin tensor {key!r} has no transformers equal")


def hf_state_dict_from(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """vitkit (= timm) names to the checkpoint names transformers saves; the inverse of `convert.from_hf`."""
    prefix = "swin." if config.num_classes else ""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("head.fc."):
            out["classifier." + key.removeprefix("head.fc.")] = value
            continue
        m = _BLOCK.match(key)
        if m and re.fullmatch(r"attn\.qkv\.(weight|bias)", m[3]):
            kind = m[3].rsplit(".", 1)[1]
            for part, chunk in zip(("query", "key", "value"), value.chunk(3), strict=True):
                out[f"{prefix}encoder.layers.{m[1]}.blocks.{m[2]}.attention.self.{part}.{kind}"] = chunk.contiguous()
            continue
        out[prefix + _hf_name(key)] = value
    return out


def transformers_peer(config):
    """(transformers class name, HF config dict, state-dict converter) of the transformers model equal to
    `config`; `vitkit.load` of the saved directory gives the same config and state dict back."""
    hf = hf_config_from(config)
    return hf["architectures"][0], hf, lambda state_dict: hf_state_dict_from(state_dict, config)


def timm_peer(config) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(timm module, class name, constructor kwargs, build-only kwargs) of timm's `SwinTransformer` equal to
    this one: every config field is timm's argument of the same name (`act_layer` passed when not timm's
    default 'gelu')."""
    if not isinstance(config, SwinConfig):
        raise ValueError(f"no timm SwinTransformer equals a {type(config).__name__} model")
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if kwargs["act_layer"] == "gelu":
        del kwargs["act_layer"]
    return "timm.models.swin_transformer", "SwinTransformer", kwargs, {}
