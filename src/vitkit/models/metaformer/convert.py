"""Hugging Face `PoolFormerForImageClassification` checkpoints (model_type "poolformer": PoolFormer V1) to
vitkit's (= timm's) MetaFormer config and parameter names.

Hugging Face's PoolFormer is timm's `poolformer_*` except for the head: it normalises the whole last map
(GroupNorm, one group) and then averages, where timm averages and then normalises the pooled vector; the
config's `norm_before_pool` (vitkit's own) keeps Hugging Face's order.
"""

import re

import torch

from ..registry import make_config

# (Hugging Face name after "poolformer.", timm name); {} stands for a stage / block index
_BLOCK = "encoder.block.{}.{}."
_NAMES = [
    (_BLOCK + "before_norm.", "stages.{}.blocks.{}.norm1."),
    (_BLOCK + "after_norm.", "stages.{}.blocks.{}.norm2."),
    (_BLOCK + "output.conv1.", "stages.{}.blocks.{}.mlp.fc1."),
    (_BLOCK + "output.conv2.", "stages.{}.blocks.{}.mlp.fc2."),
    (_BLOCK + "layer_scale_1", "stages.{}.blocks.{}.layer_scale1.scale"),
    (_BLOCK + "layer_scale_2", "stages.{}.blocks.{}.layer_scale2.scale"),
]
_PATTERNS = [(re.compile("^" + r"(\d+)".join(re.escape(p) for p in hf.split("{}"))), ours) for hf, ours in _NAMES]
_EMBED = re.compile(r"^encoder\.patch_embeddings\.(\d+)\.projection\.")


def is_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("poolformer.encoder.", "encoder.patch_embeddings.")) for k in state_dict)


def _rename(key: str) -> str | None:
    if key.startswith("classifier."):
        return "head.fc." + key.removeprefix("classifier.")
    if key.startswith("norm."):
        return "head.norm." + key.removeprefix("norm.")
    key = key.removeprefix("poolformer.")
    match = _EMBED.match(key)
    if match:
        stage = int(match[1])
        return ("stem.conv." if stage == 0 else f"stages.{stage}.downsample.conv.") + key[match.end():]
    for pattern, ours in _PATTERNS:
        match = pattern.match(key)
        if match:
            return ours.format(*match.groups()) + key[match.end():]
    return None


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every tensor; unknown keys are kept as they are, so a strict load names them."""
    out = {}
    for key, value in state_dict.items():
        new = _rename(key)
        out[key if new is None else new] = value
    return out


def from_hf(hf: dict, state_dict: dict[str, torch.Tensor]):
    """(MetaFormerConfig, timm-keyed state dict) of a Hugging Face PoolFormer checkpoint."""
    expected = {"patch_sizes": [7, 3, 3, 3], "strides": [4, 2, 2, 2], "padding": [2, 1, 1, 1], "mlp_ratio": 4.0,
                "hidden_act": "gelu"}
    stages = len(hf.get("depths", (2, 2, 6, 2)))
    for key, value in expected.items():
        got = hf.get(key, value)
        if isinstance(value, list):
            got, value = list(got)[:stages], value[:1] + value[1:2] * (stages - 1)
        if got != value:
            raise ValueError(f"Hugging Face poolformer {key}={got!r} is not supported; timm's MetaFormer uses "
                             f"{value!r}")
    dims = tuple(hf["hidden_sizes"])
    if any(a == b for a, b in zip(dims, dims[1:], strict=False)):
        raise ValueError(f"Hugging Face poolformer hidden_sizes {list(dims)} repeat a width; timm's MetaFormer "
                         "drops the downsampling layer there, Hugging Face keeps it")
    weights = convert_state_dict(state_dict)
    if "head.norm.weight" not in weights:
        raise ValueError("a Hugging Face PoolFormerModel checkpoint (no final norm) is not supported; convert a "
                         "PoolFormerForImageClassification one")
    fc = weights.get("head.fc.weight")
    ls = hf.get("layer_scale_init_value", 1e-5) if hf.get("use_layer_scale", True) else None
    config = make_config(
        "metaformer", in_chans=hf.get("num_channels", 3), num_classes=fc.shape[0] if fc is not None else 0,
        depths=tuple(hf["depths"]), dims=dims, token_mixers="pooling", pool_size=hf.get("pool_size", 3),
        mlp_act="gelu", mlp_bias=True, downsample_norm=None, norm_layers="groupnorm1",
        layer_scale_init_values=ls, res_scale_init_values=None, output_norm="groupnorm1", norm_before_pool=True,
        use_mlp_head=False, drop_path_rate=hf.get("drop_path_rate", 0.0),
    )
    return config, weights
