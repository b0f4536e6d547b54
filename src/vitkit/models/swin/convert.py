"""Other Swin checkpoint layouts -> timm >= 0.9 key names (this model's).

- timm < 0.9 (and the original Microsoft release): PatchMerging at the END of stage i (`layers.i.downsample`,
  which now is `layers.{i+1}.downsample`), head `head.*` instead of `head.fc.*`, and the
  `relative_position_index` / `attn_mask` buffers saved with the weights.
- Hugging Face transformers `SwinForImageClassification` / `SwinModel`, both the names `save_pretrained`
  writes (`attention.self.query`, ...) and transformers 5's in-memory names (`attention.q_proj`, ...).
"""

import re

import torch

from ..registry import make_config

_BUFFERS = ("relative_position_index", "attn_mask")


def _is_old_timm(state_dict: dict[str, torch.Tensor]) -> bool:
    # the new layout never has a patch merging in stage 0, nor a bare linear head
    return any(k.startswith("layers.0.downsample.") for k in state_dict) or "head.weight" in state_dict


def from_old_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop saved buffers; move patch mergings to the next stage and `head.` to `head.fc.` if the layout is old.
    A state dict already in the new layout comes back with only the buffers dropped."""
    old = _is_old_timm(state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] in _BUFFERS:
            continue
        if old:
            key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + 1}.downsample.", key)
            key = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)
        out[key] = value
    return out


# (Hugging Face name after the `swin.` prefix, timm name); {} is a stage index, {b} a block index
_BLOCK_NAMES = [
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("attention.self.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("attention.relative_position_bias.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("attention.output.dense.", "attn.proj."),
    ("attention.o_proj.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
]
_QKV = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:self\.(query|key|value)|([qkv])_proj)\."
                  r"(weight|bias)$")
_QKV_PART = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}


def _hf_key(key: str) -> str | None:
    """The timm name of one non-qkv HF key, or None for tensors this model has no use for."""
    if key.startswith("classifier."):
        return "head.fc." + key.removeprefix("classifier.")
    key = key.removeprefix("swin.")
    if key.endswith(_BUFFERS) or key.startswith(("embeddings.mask_token", "pooler.")):
        return None
    for hf, ours in (("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
                     ("embeddings.norm.", "patch_embed.norm."), ("layernorm.", "norm.")):
        if key.startswith(hf):
            return ours + key.removeprefix(hf)
    m = re.match(r"^encoder\.layers\.(\d+)\.downsample\.(.*)$", key)
    if m:
        return f"layers.{int(m[1]) + 1}.downsample.{m[2]}"
    m = re.match(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.*)$", key)
    if m:
        for hf, ours in _BLOCK_NAMES:
            if m[3].startswith(hf):
                return f"layers.{m[1]}.blocks.{m[2]}.{ours}{m[3].removeprefix(hf)}"
    raise ValueError(f"Hugging Face Swin checkpoint: no vitkit equivalent for tensor {key!r}")


def from_hf(hf_config: dict, hf_state_dict: dict[str, torch.Tensor]):
    """(SwinConfig, timm-keyed state dict) of a transformers `SwinForImageClassification` / `SwinModel`."""
    unsupported = [name for name, differs in [
        ("use_absolute_embeddings", hf_config.get("use_absolute_embeddings", False)),
        (f"layer_norm_eps={hf_config.get('layer_norm_eps')}", hf_config.get("layer_norm_eps", 1e-5) != 1e-5),
        (f"hidden_act={hf_config.get('hidden_act')!r}", hf_config.get("hidden_act", "gelu") != "gelu"),
    ] if differs]
    if unsupported:
        raise ValueError(f"Hugging Face Swin config: vitkit's Swin has no equivalent of {', '.join(unsupported)}")
    has_head = any(k.startswith("classifier.") for k in hf_state_dict)
    num_classes = len(hf_config.get("id2label") or {}) if has_head else 0
    image_size, patch_size = hf_config.get("image_size", 224), hf_config.get("patch_size", 4)
    if isinstance(image_size, list | tuple):
        image_size = image_size[0] if len(set(image_size)) == 1 else image_size
    if isinstance(patch_size, list | tuple):
        patch_size = patch_size[0] if len(set(patch_size)) == 1 else patch_size
    config = make_config(
        "swin", img_size=image_size, patch_size=patch_size, in_chans=hf_config.get("num_channels", 3),
        num_classes=num_classes, embed_dim=hf_config["embed_dim"], depths=tuple(hf_config["depths"]),
        num_heads=tuple(hf_config["num_heads"]), window_size=hf_config.get("window_size", 7),
        mlp_ratio=hf_config.get("mlp_ratio", 4.0), qkv_bias=hf_config.get("qkv_bias", True),
    )
    out, qkv = {}, {}
    for key, value in hf_state_dict.items():
        m = _QKV.match(key.removeprefix("swin."))
        if m:
            qkv.setdefault((m[1], m[2], m[5]), [None] * 3)[_QKV_PART[m[3] or m[4]]] = value
        elif (name := _hf_key(key)) is not None:
            out[name] = value
    for (stage, block, kind), parts in qkv.items():
        if any(p is None for p in parts):
            raise ValueError(f"Hugging Face Swin checkpoint: stage {stage} block {block} lacks a query, key or "
                             f"value {kind}")
        out[f"layers.{stage}.blocks.{block}.attn.qkv.{kind}"] = torch.cat(parts)
    return config, out

