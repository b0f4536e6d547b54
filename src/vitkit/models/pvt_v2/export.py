"""vitkit PVTv2 -> the equal transformers model (`PvtV2ForImageClassification`, or `PvtV2Model` without a
classifier): the bench's transformers peer, the reverse of convert.py's `from_hf`. Also timm's
`PyramidVisionTransformerV2` arguments (the timm peer)."""

import dataclasses
import re
from typing import Any

import torch

from .configs import PvtV2Config
from .convert import BLOCK_NAMES

HF_NORM_EPS = 1e-6  # transformers' `layer_norm_eps` default; timm's norms in the blocks


def hf_config_from(config) -> dict:
    """The Hugging Face PVTv2 config equal to a vitkit PVTv2, or a ValueError naming what has none.

    transformers has one epsilon for every norm: a model with timm's mix (`norm_eps=None`: 1e-5 in the patch
    embeddings and spatial reductions) maps to 1e-6 everywhere, which moves outputs by about 1e-6."""
    c = config
    if not isinstance(c, PvtV2Config):
        raise ValueError(f"no transformers PVTv2 equals a {type(c).__name__} model")
    if c.global_pool != "avg":
        raise ValueError(f"no transformers PVTv2 equals this model: it has global_pool={c.global_pool!r} "
                         "(transformers always averages)")
    if any(r != int(r) for r in c.mlp_ratios):
        raise ValueError(f"no transformers PVTv2 equals this model: mlp_ratios {c.mlp_ratios} (transformers takes "
                         "whole numbers)")
    stages = len(c.depths)
    return {
        "model_type": "pvt_v2",
        "architectures": ["PvtV2ForImageClassification" if c.num_classes else "PvtV2Model"],
        "image_size": c.img_size, "num_channels": c.in_chans, "num_encoder_blocks": stages,
        "depths": list(c.depths), "hidden_sizes": list(c.embed_dims), "num_attention_heads": list(c.num_heads),
        "sr_ratios": list(c.sr_ratios), "mlp_ratios": [int(r) for r in c.mlp_ratios],
        "patch_sizes": [7] + [3] * (stages - 1), "strides": [4] + [2] * (stages - 1), "hidden_act": "gelu",
        "qkv_bias": c.qkv_bias,
        "linear_attention": c.linear, "layer_norm_eps": c.norm_eps if c.norm_eps is not None else HF_NORM_EPS,
        "drop_path_rate": c.drop_path_rate, "id2label": {str(i): str(i) for i in range(c.num_classes)},
    }


def _hf_name(key: str) -> str:
    if key.startswith("patch_embed."):
        return "encoder.layers.0.patch_embedding." + key.removeprefix("patch_embed.").replace("norm.", "layer_norm.")
    m = re.match(r"^stages\.(\d+)\.downsample\.(proj|norm)\.(.*)$", key)
    if m:
        return f"encoder.layers.{m[1]}.patch_embedding.{'layer_norm' if m[2] == 'norm' else 'proj'}.{m[3]}"
    m = re.match(r"^stages\.(\d+)\.norm\.(.*)$", key)
    if m:
        return f"encoder.layers.{m[1]}.layer_norm.{m[2]}"
    m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key)
    if m:
        for hf, ours in BLOCK_NAMES:
            if m[3].startswith(ours):
                return f"encoder.layers.{m[1]}.blocks.{m[2]}.{hf}{m[3].removeprefix(ours)}"
    raise ValueError(f"vitkit PVTv2 tensor {key!r} has no transformers equal")


def hf_state_dict_from(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """vitkit (= timm) names to the checkpoint names transformers saves; the inverse of `convert.from_hf`."""
    prefix = "pvt_v2." if config.num_classes else ""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            out["classifier." + key.removeprefix("head.")] = value
            continue
        m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.kv\.(weight|bias)$", key)
        if m:
            for part, chunk in zip(("key", "value"), value.chunk(2), strict=True):
                out[f"{prefix}encoder.layers.{m[1]}.blocks.{m[2]}.attention.{part}.{m[3]}"] = chunk.contiguous()
            continue
        out[prefix + _hf_name(key)] = value
    return out


def transformers_peer(config):
    """(transformers class name, HF config dict, state-dict converter) of the transformers model equal to
    `config` (up to the norm epsilons, see `hf_config_from`)."""
    hf = hf_config_from(config)
    return hf["architectures"][0], hf, lambda state_dict: hf_state_dict_from(state_dict, config)


def timm_peer(config) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(timm module, class name, constructor kwargs, build-only kwargs) of timm's `PyramidVisionTransformerV2`
    equal to this one: every config field but vitkit's own `img_size` and `norm_eps` is timm's argument."""
    if not isinstance(config, PvtV2Config):
        raise ValueError(f"no timm PyramidVisionTransformerV2 equals a {type(config).__name__} model")
    if config.norm_eps is not None:
        raise ValueError(f"no timm PyramidVisionTransformerV2 equals this model: norm_eps={config.norm_eps} (timm "
                         "fixes its patch-embedding and spatial-reduction norms at 1e-5)")
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name not in ("img_size", "norm_eps")}
    return "timm.models.pvt_v2", "PyramidVisionTransformerV2", kwargs, {}
