"""Hugging Face `ConvNextForImageClassification` / `ConvNextV2ForImageClassification` / `ConvNextModel`
checkpoints to vitkit's (= timm's) config and parameter names."""

import re

import torch

from ..registry import make_config

# (Hugging Face name after the model prefix, timm name); {} stands for a stage / block index
_NAMES = [
    ("embeddings.patch_embeddings.", "stem.0."),
    ("embeddings.layernorm.", "stem.1."),
    ("encoder.stages.{}.downsampling_layer.", "stages.{}.downsample."),
    ("encoder.stages.{}.layers.{}.dwconv.", "stages.{}.blocks.{}.conv_dw."),
    ("encoder.stages.{}.layers.{}.layernorm.", "stages.{}.blocks.{}.norm."),
    ("encoder.stages.{}.layers.{}.pwconv1.", "stages.{}.blocks.{}.mlp.fc1."),
    ("encoder.stages.{}.layers.{}.pwconv2.", "stages.{}.blocks.{}.mlp.fc2."),
    ("encoder.stages.{}.layers.{}.grn.", "stages.{}.blocks.{}.mlp.grn."),
    ("encoder.stages.{}.layers.{}.layer_scale_parameter", "stages.{}.blocks.{}.gamma"),
    ("layernorm.", "head.norm."),
    ("classifier.", "head.fc."),
]
_PATTERNS = [(re.compile("^" + r"(\d+)".join(re.escape(p) for p in hf.split("{}"))), ours) for hf, ours in _NAMES]
_PREFIXES = ("convnext.", "convnextv2.")


def _rename(key: str) -> str | None:
    for prefix in _PREFIXES:
        key = key.removeprefix(prefix)
    for pattern, ours in _PATTERNS:
        match = pattern.match(key)
        if match:
            return ours.format(*match.groups()) + key[match.end():]
    return None


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every tensor; GRN's (1, 1, 1, C) weight and bias become timm's (C,). Unknown keys are kept as they
    are, so a strict load names them."""
    out = {}
    for key, value in state_dict.items():
        new = _rename(key)
        if new is None:
            out[key] = value
            continue
        if ".mlp.grn." in new:
            value = value.reshape(-1)
        out[new] = value
    return out


def from_hf(hf: dict, state_dict: dict[str, torch.Tensor]):
    """(ConvNeXtConfig, timm-keyed state dict) of a Hugging Face ConvNeXt (V2) checkpoint."""
    model_type = hf.get("model_type")
    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"Hugging Face {model_type} hidden_act {act!r} is not supported; supported: 'gelu'")
    weights = convert_state_dict(state_dict)
    fc = weights.get("head.fc.weight")
    ls = hf.get("layer_scale_init_value", 1e-6)
    config = make_config(
        "convnext",
        in_chans=hf.get("num_channels", 3),
        num_classes=fc.shape[0] if fc is not None else 0,  # ConvNextModel has no classifier
        depths=tuple(hf["depths"]), dims=tuple(hf["hidden_sizes"]), patch_size=hf.get("patch_size", 4),
        ls_init_value=None if model_type == "convnextv2" or ls <= 0 else ls,
        use_grn=model_type == "convnextv2",
        norm_eps=1e-6,  # HF's stem, downsampling and block norms: fixed 1e-6
        head_norm_eps=hf.get("layer_norm_eps", 1e-12),  # HF's final norm
        drop_path_rate=hf.get("drop_path_rate", 0.0),
        img_size=_input_size(hf),
    )
    return config, weights


def _input_size(hf: dict) -> int | None:
    """The directory's `image_size` when it is one ConvNeXt can take (a multiple of the total stride), else None."""
    size = hf.get("image_size")
    stride = hf.get("patch_size", 4) * 2 ** (len(hf["depths"]) - 1)
    return size if isinstance(size, int) and size > 0 and size % stride == 0 else None

