"""vitkit ConvNeXt V1 / V2 -> the equal transformers model (`ConvNextForImageClassification`,
`ConvNextV2ForImageClassification`, or `ConvNextModel` / `ConvNextV2Model` without a classifier): the bench's
transformers peer, the reverse of convert.py. Also timm's `ConvNeXt` arguments (the timm peer)."""

import dataclasses
import re
from typing import Any

import torch

from .configs import ConvNeXtConfig

HF_NORM_EPS = 1e-6  # transformers' stem, downsampling and block norms: fixed
HF_KERNEL = 7  # transformers' depthwise convolution: fixed 7x7

# (vitkit name, Hugging Face name after the model prefix); {} stands for a stage / block index
_NAMES = [
    ("stem.0.", "embeddings.patch_embeddings."),
    ("stem.1.", "embeddings.layernorm."),
    ("stages.{}.downsample.", "encoder.stages.{}.downsampling_layer."),
    ("stages.{}.blocks.{}.conv_dw.", "encoder.stages.{}.layers.{}.dwconv."),
    ("stages.{}.blocks.{}.norm.", "encoder.stages.{}.layers.{}.layernorm."),
    ("stages.{}.blocks.{}.mlp.fc1.", "encoder.stages.{}.layers.{}.pwconv1."),
    ("stages.{}.blocks.{}.mlp.fc2.", "encoder.stages.{}.layers.{}.pwconv2."),
    ("stages.{}.blocks.{}.mlp.grn.", "encoder.stages.{}.layers.{}.grn."),
    ("stages.{}.blocks.{}.gamma", "encoder.stages.{}.layers.{}.layer_scale_parameter"),
    ("head.norm.", "layernorm."),
]
_PATTERNS = [(re.compile("^" + r"(\d+)".join(re.escape(p) for p in ours.split("{}"))), hf) for ours, hf in _NAMES]


def _eps(config: ConvNeXtConfig) -> float:
    return config.norm_eps if config.norm_eps is not None else 1e-6


def hf_config_from(config) -> dict:
    """The Hugging Face ConvNeXt (V2) config equal to a vitkit ConvNeXt, or a ValueError naming what has none."""
    c = config
    if not isinstance(c, ConvNeXtConfig):
        raise ValueError(f"no transformers ConvNeXt equals a {type(c).__name__} model")
    v2 = c.use_grn
    unsupported = [name for name, differs in [
        (f"kernel_sizes={c.kernel_sizes}", any(k != HF_KERNEL for k in c.kernel_sizes)),
        ("conv_bias=False", not c.conv_bias),
        (f"norm_eps={c.norm_eps}", _eps(c) != HF_NORM_EPS),
        (f"global_pool={c.global_pool!r}", c.global_pool != "avg"),
        ("GRN with layer scale (ConvNeXt V2 has none)", v2 and c.ls_init_value is not None),
    ] if differs]
    if unsupported:
        raise ValueError(f"no transformers ConvNeXt equals this model: it has {', '.join(unsupported)}")
    model_type = "convnextv2" if v2 else "convnext"
    base, classifier = ("ConvNextV2Model", "ConvNextV2ForImageClassification") if v2 else (
        "ConvNextModel", "ConvNextForImageClassification")
    hf = {
        "model_type": model_type, "architectures": [classifier if c.num_classes else base],
        "num_channels": c.in_chans, "patch_size": c.patch_size, "num_stages": len(c.depths),
        "hidden_sizes": list(c.dims), "depths": list(c.depths), "hidden_act": "gelu",
        "layer_norm_eps": c.head_norm_eps if c.head_norm_eps is not None else _eps(c),
        "drop_path_rate": c.drop_path_rate, "image_size": c.img_size or 224,
        "id2label": {str(i): str(i) for i in range(c.num_classes)},
    }
    if not v2:  # 0: no layer scale
        hf["layer_scale_init_value"] = c.ls_init_value if c.ls_init_value is not None else 0.0
    return hf


def hf_state_dict_from(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """vitkit (= timm) names to the checkpoint names transformers saves; the inverse of
    `convert.convert_state_dict`. 1x1-conv MLP weights (`conv_mlp`) become linear ones and GRN's (C,) weight
    and bias transformers' (1, 1, 1, C)."""
    prefix = ("convnextv2." if config.use_grn else "convnext.") if config.num_classes else ""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("head.fc."):
            out["classifier." + key.removeprefix("head.fc.")] = value
            continue
        found = next(((m, hf) for pattern, hf in _PATTERNS if (m := pattern.match(key))), None)
        if found is None:
            raise ValueError(f"vitkit ConvNeXt tensor {key!r} has no transformers equal")
        m, hf = found
        name = hf.format(*m.groups()) + key[m.end():]
        if ".pwconv" in name and name.endswith(".weight") and value.dim() == 4:
            value = value.flatten(1)  # (out, in, 1, 1) -> (out, in)
        elif ".grn." in name:
            value = value.reshape(1, 1, 1, -1)
        out[prefix + name] = value
    return out


def transformers_peer(config):
    """(transformers class name, HF config dict, state-dict converter) of the transformers model equal to
    `config`. `vitkit.load` of the saved directory gives the same state dict back, except for `conv_mlp`
    models (their 1x1 convolutions come back as the equal linear layers)."""
    hf = hf_config_from(config)
    return hf["architectures"][0], hf, lambda state_dict: hf_state_dict_from(state_dict, config)


def timm_peer(config) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(timm module, class name, constructor kwargs, build-only kwargs) of timm's `ConvNeXt` equal to this one.
    The config's names are timm's, except vitkit's own `head_norm_eps`: timm's head norm uses `norm_eps`, so
    a different head eps has no timm equal."""
    if not isinstance(config, ConvNeXtConfig):
        raise ValueError(f"no timm ConvNeXt equals a {type(config).__name__} model")
    if config.head_norm_eps is not None and config.head_norm_eps != _eps(config):
        raise ValueError(f"no timm ConvNeXt equals this model: its head norm eps (head_norm_eps="
                         f"{config.head_norm_eps}, vitkit's own, for Hugging Face checkpoints) differs from "
                         f"norm_eps={_eps(config)}, which timm uses for every norm")
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "head_norm_eps"}
    return "timm.models.convnext", "ConvNeXt", kwargs, {}
