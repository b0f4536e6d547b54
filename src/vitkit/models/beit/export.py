"""vitkit BEiT -> the equal transformers model (`BeitForImageClassification`, or `BeitModel` without a
classifier): the bench's transformers peer, the reverse of convert.py's `from_hf`. Also timm's `Beit`
arguments (the timm peer)."""

import dataclasses
import re
from functools import partial
from typing import Any

import torch
from torch import nn

from .configs import BeitConfig

# (vitkit name inside `blocks.i.`, transformers' save_pretrained name inside `encoder.layer.i.`)
_BLOCK_NAMES = [
    ("norm1.", "layernorm_before."),
    ("norm2.", "layernorm_after."),
    ("gamma_1", "lambda_1"),
    ("gamma_2", "lambda_2"),
    ("attn.relative_position_bias_table", "attention.attention.relative_position_bias.relative_position_bias_table"),
    ("attn.proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
]
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")


def _check(config) -> BeitConfig:
    if not isinstance(config, BeitConfig):
        raise ValueError(f"no BEiT equals a {type(config).__name__} model")
    return config


def hf_config_from(config) -> dict:
    """The Hugging Face BEiT config equal to a vitkit BEiT, or a ValueError naming what has none."""
    c = _check(config)
    hidden = int(c.embed_dim * c.mlp_ratio)
    unsupported = [name for name, differs in [
        ("qkv_bias=False (transformers' query and value always have biases)", not c.qkv_bias),
        (f"global_pool={c.global_pool!r} (transformers: mean pooling or the class token)", c.global_pool == ""),
        (f"fc_norm={c.fc_norm} with global_pool={c.global_pool!r} (transformers normalises the mean-pooled "
         "features only)", c.use_fc_norm != (c.global_pool == "avg")),
    ] if differs]
    if unsupported:
        raise ValueError(f"no transformers BEiT equals this model: it has {', '.join(unsupported)}")
    return {
        "model_type": "beit", "architectures": ["BeitForImageClassification" if c.num_classes else "BeitModel"],
        "image_size": c.img_size, "patch_size": c.patch_size, "num_channels": c.in_chans, "hidden_size": c.embed_dim,
        "num_hidden_layers": c.depth, "num_attention_heads": c.num_heads, "intermediate_size": hidden,
        "hidden_act": "gelu", "layer_norm_eps": c.norm_eps, "layer_scale_init_value": c.init_values or 0.0,
        "use_absolute_position_embeddings": c.use_abs_pos_emb, "use_relative_position_bias": c.use_rel_pos_bias,
        "use_shared_relative_position_bias": c.use_shared_rel_pos_bias, "use_mean_pooling": c.global_pool == "avg",
        "use_mask_token": False, "drop_path_rate": c.drop_path_rate, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "id2label": {str(i): str(i) for i in range(c.num_classes)},
    }


def _hf_name(key: str) -> str:
    for ours, hf in (("cls_token", "embeddings.cls_token"), ("pos_embed", "embeddings.position_embeddings"),
                     ("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
                     ("rel_pos_bias.", "encoder.relative_position_bias."), ("fc_norm.", "pooler.layernorm."),
                     ("norm.", "layernorm.")):
        if key.startswith(ours):
            return hf + key.removeprefix(ours)
    m = _BLOCK.match(key)
    if m:
        for ours, hf in _BLOCK_NAMES:
            if m[2].startswith(ours):
                return f"encoder.layer.{m[1]}.{hf}{m[2].removeprefix(ours)}"
    raise ValueError(f"vitkit BEiT tensor {key!r} has no transformers equal")


def hf_state_dict_from(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """vitkit (= timm) names to the checkpoint names transformers saves; the inverse of `convert.from_hf`."""
    prefix = "beit." if config.num_classes else ""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            out["classifier." + key.removeprefix("head.")] = value
            continue
        m = _BLOCK.match(key)
        if m and m[2] == "attn.qkv.weight":
            for part, chunk in zip(("query", "key", "value"), value.chunk(3), strict=True):
                out[f"{prefix}encoder.layer.{m[1]}.attention.attention.{part}.weight"] = chunk.contiguous()
            continue
        if m and m[2] in ("attn.q_bias", "attn.v_bias"):
            part = "query" if m[2] == "attn.q_bias" else "value"
            out[f"{prefix}encoder.layer.{m[1]}.attention.attention.{part}.bias"] = value
            continue
        out[prefix + _hf_name(key)] = value
    return out


def transformers_peer(config):
    """(transformers class name, HF config dict, state-dict converter) of the transformers model equal to
    `config`; `vitkit.load` of the saved directory gives the same config and state dict back."""
    hf = hf_config_from(config)
    return hf["architectures"][0], hf, lambda state_dict: hf_state_dict_from(state_dict, config)


def timm_peer(config) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(timm module, class name, constructor kwargs, build-only kwargs) of timm's `Beit` equal to this one:
    every config field is timm's argument of the same name but vitkit's `norm_eps` (timm's `norm_layer`,
    passed as a build-only LayerNorm) and `fc_norm` (timm decides it from global_pool)."""
    c = _check(config)
    if c.use_fc_norm != (c.global_pool == "avg"):
        raise ValueError(f"no timm Beit equals this model: fc_norm={c.fc_norm} with global_pool={c.global_pool!r} "
                         "(timm uses fc_norm exactly when global_pool is 'avg')")
    kwargs = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name not in ("norm_eps", "fc_norm")}
    return "timm.models.beit", "Beit", kwargs, {"norm_layer": partial(nn.LayerNorm, eps=c.norm_eps)}
