"""Other BEiT checkpoint layouts -> timm's key names (this model's).

- Hugging Face transformers `BeitForImageClassification` / `BeitModel` (model_type "beit"): both the names
  `save_pretrained` writes (`encoder.layer.i.attention.attention.query`, `lambda_1`, ...) and transformers 5's
  in-memory names (`layers.i.attention.q_proj`, `mlp.fc1`, ...). Separate query / key / value projections
  become timm's packed `qkv.weight` with `q_bias` / `v_bias` (BEiT's key has no bias).
- Original (microsoft/unilm) and older timm checkpoints have timm's names already; their saved
  `relative_position_index` buffers are dropped by the model's `adapt_state_dict`.
"""

import re

import torch

from ..registry import make_config

_HF_PREFIXES = ("beit.", "embeddings.", "encoder.layer.", "layers.")

# (Hugging Face name inside a block, timm name inside `blocks.i.`), save_pretrained and in-memory names
_BLOCK_NAMES = [
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("lambda_1", "gamma_1"),
    ("lambda_2", "gamma_2"),
    ("attention.attention.relative_position_bias.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("relative_position_bias.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("attention.output.dense.", "attn.proj."),
    ("attention.o_proj.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
]
_BLOCK = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.*)$")
_QKV = re.compile(r"^attention\.(?:attention\.(query|key|value)|([qkv])_proj)\.(weight|bias)$")
_QKV_PART = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}
_IGNORED = ("embeddings.mask_token", "relative_position_index")


def is_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(_HF_PREFIXES) for k in state_dict) and "cls_token" not in state_dict


def _hf_key(key: str) -> str | None:
    """The timm name of one HF key that is not a query / key / value projection; None for tensors this
    model has no use for."""
    if key.startswith("classifier."):
        return "head." + key.removeprefix("classifier.")
    key = key.removeprefix("beit.")
    if key.startswith(_IGNORED) or key.endswith(_IGNORED):
        return None
    for hf, ours in (("embeddings.cls_token", "cls_token"), ("embeddings.position_embeddings", "pos_embed"),
                     ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
                     ("encoder.relative_position_bias.", "rel_pos_bias."),
                     ("shared_position_bias.", "rel_pos_bias."),
                     ("pooler.layernorm.", "fc_norm."), ("layernorm.", "norm.")):
        if key.startswith(hf):
            return ours + key.removeprefix(hf)
    m = _BLOCK.match(key)
    if m:
        for hf, ours in _BLOCK_NAMES:
            if m[2].startswith(hf):
                return f"blocks.{m[1]}.{ours}{m[2].removeprefix(hf)}"
    raise ValueError(f"Hugging Face BEiT checkpoint: no vitkit equivalent for tensor {key!r}")


def from_hf_state_dict(hf_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face BEiT names -> timm's (the config is not needed: every name maps on its own)."""
    out, qkv = {}, {}
    for key, value in hf_state_dict.items():
        m = _BLOCK.match(key.removeprefix("beit."))
        part = _QKV.match(m[2]) if m else None
        if part:
            qkv.setdefault((m[1], part[3]), [None] * 3)[_QKV_PART[part[1] or part[2]]] = value
        elif (name := _hf_key(key)) is not None:
            out[name] = value
    for (block, kind), (q, k, v) in qkv.items():
        if kind == "weight":
            if q is None or k is None or v is None:
                raise ValueError(f"Hugging Face BEiT checkpoint: block {block} lacks a query, key or value weight")
            out[f"blocks.{block}.attn.qkv.weight"] = torch.cat([q, k, v])
        else:
            if k is not None:
                raise ValueError(f"Hugging Face BEiT checkpoint: block {block} has a key bias, which BEiT (timm's "
                                 "q_bias / v_bias) has no place for")
            if q is None or v is None:
                raise ValueError(f"Hugging Face BEiT checkpoint: block {block} has a query or value bias, not both")
            out[f"blocks.{block}.attn.q_bias"], out[f"blocks.{block}.attn.v_bias"] = q, v
    return out


def from_hf(hf_config: dict, hf_state_dict: dict[str, torch.Tensor]):
    """(BeitConfig, timm-keyed state dict) of a transformers `BeitForImageClassification` / `BeitModel`."""
    hidden, heads = hf_config.get("hidden_size", 768), hf_config.get("num_attention_heads", 12)
    unsupported = [name for name, differs in [
        (f"hidden_act={hf_config.get('hidden_act')!r}", hf_config.get("hidden_act", "gelu") != "gelu"),
        (f"head_dim={hf_config.get('head_dim')} (vitkit: hidden_size / num_attention_heads)",
         hf_config.get("head_dim") not in (None, hidden // max(heads, 1))),
    ] if differs]
    if unsupported:
        raise ValueError(f"Hugging Face BEiT config: vitkit's BEiT has no equivalent of {', '.join(unsupported)}")
    state_dict = from_hf_state_dict(hf_state_dict)
    has_head = "head.weight" in state_dict
    num_classes = len(hf_config.get("id2label") or {}) if has_head else 0
    image_size, patch_size = hf_config.get("image_size", 224), hf_config.get("patch_size", 16)
    if isinstance(image_size, list | tuple):
        image_size = image_size[0] if len(set(image_size)) == 1 else image_size
    if isinstance(patch_size, list | tuple):
        patch_size = patch_size[0] if len(set(patch_size)) == 1 else patch_size
    mean_pooling = hf_config.get("use_mean_pooling", True)
    if mean_pooling and "fc_norm.weight" not in state_dict:  # BeitModel saved without its pooler
        raise ValueError("Hugging Face BEiT checkpoint: use_mean_pooling is set but the pooler's layernorm "
                         "(beit.pooler.layernorm) is missing; vitkit's BEiT normalises the pooled features")
    config = make_config(
        "beit", img_size=image_size, patch_size=patch_size, in_chans=hf_config.get("num_channels", 3),
        num_classes=num_classes, global_pool="avg" if mean_pooling else "token", embed_dim=hidden,
        depth=hf_config.get("num_hidden_layers", 12), num_heads=heads,
        mlp_ratio=hf_config.get("intermediate_size", 4 * hidden) / hidden, qkv_bias=True,
        init_values=hf_config.get("layer_scale_init_value") or None,
        use_abs_pos_emb=hf_config.get("use_absolute_position_embeddings", False),
        use_rel_pos_bias=hf_config.get("use_relative_position_bias", False),
        use_shared_rel_pos_bias=hf_config.get("use_shared_relative_position_bias", False),
        norm_eps=hf_config.get("layer_norm_eps", 1e-12),
    )
    return config, state_dict
