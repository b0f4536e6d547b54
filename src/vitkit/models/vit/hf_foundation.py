"""Hugging Face `Dinov2Model`, `Dinov2WithRegistersModel`, `CLIPVisionModel(WithProjection)` and
`SiglipVisionModel` checkpoints to vitkit's (= timm's) ViT config and parameter names.

Only the backbone: `Dinov2ForImageClassification`'s head reads [class token, mean patch token] concatenated,
which timm's ViT has no equal of, so such checkpoints are refused rather than half loaded."""

import re

import torch

from ..registry import make_config

_NAMES = [  # (Hugging Face name without the "dinov2." prefix, timm name); {} is a block index
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("encoder.layer.{}.norm1.", "blocks.{}.norm1."),
    ("encoder.layer.{}.norm2.", "blocks.{}.norm2."),
    ("encoder.layer.{}.attention.output.dense.", "blocks.{}.attn.proj."),
    ("encoder.layer.{}.layer_scale1.lambda1", "blocks.{}.ls1.gamma"),
    ("encoder.layer.{}.layer_scale2.lambda1", "blocks.{}.ls2.gamma"),
    ("encoder.layer.{}.mlp.fc1.", "blocks.{}.mlp.fc1."),
    ("encoder.layer.{}.mlp.fc2.", "blocks.{}.mlp.fc2."),
    ("encoder.layer.{}.mlp.weights_in.", "blocks.{}.mlp.fc1."),
    ("encoder.layer.{}.mlp.weights_out.", "blocks.{}.mlp.fc2."),
    ("layernorm.", "norm."),
]
_PATTERNS = [(re.compile("^" + r"(\d+)".join(re.escape(p) for p in hf.split("{}"))), ours) for hf, ours in _NAMES]
_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every tensor and pack query/key/value into timm's qkv; `mask_token` (masked pretraining only) is
    dropped. Unknown keys are kept as they are, so a strict load names them."""
    out, qkv = {}, {}
    if "embeddings.register_tokens" in state_dict or "dinov2_with_registers.embeddings.register_tokens" in state_dict:
        state_dict = {k.removeprefix("dinov2_with_registers."): v for k, v in state_dict.items()}
        # as timm: registers get no position embedding, and the class token's is folded into the token
        pos = state_dict.pop("embeddings.position_embeddings")
        out["reg_token"] = state_dict.pop("embeddings.register_tokens")
        out["cls_token"] = state_dict.pop("embeddings.cls_token") + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    for key, value in state_dict.items():
        key = key.removeprefix("dinov2.").removeprefix("dinov2_with_registers.")
        if key == "embeddings.mask_token":
            continue
        match = _QKV.match(key)
        if match:
            qkv.setdefault((match[1], match[3]), {})[match[2]] = value
            continue
        out[_rename(key, _PATTERNS)] = value
    return _fuse_qkv(out, qkv, ("query", "key", "value"))


def _rename(key: str, patterns) -> str:
    """`key` in timm's names: the first (compiled pattern, format) that matches its start, rest kept."""
    for pattern, ours in patterns:
        m = pattern.match(key)
        if m:
            return ours.format(*m.groups()) + key[m.end():]
    return key


def _fuse_qkv(out: dict, qkv: dict, names: tuple[str, str, str]) -> dict:
    """Add timm's packed `blocks.i.attn.qkv.{weight,bias}` from HF's separate query/key/value tensors."""
    for (block, kind), parts in qkv.items():
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts[name] for name in names])
    return out


def from_hf(hf: dict, state_dict: dict[str, torch.Tensor]):
    """(ViTConfig, timm-keyed state dict) of a Hugging Face `Dinov2Model` checkpoint."""
    if any(k.startswith("classifier.") for k in state_dict):
        raise ValueError("Hugging Face Dinov2ForImageClassification's head (class token and mean patch token "
                         "concatenated) has no timm equal; load the backbone (Dinov2Model) instead")
    act = hf.get("hidden_act", "gelu")
    swiglu = bool(hf.get("use_swiglu_ffn", False))
    if not swiglu and act != "gelu":
        raise ValueError(f"Hugging Face dinov2 hidden_act {act!r} is not supported; supported: 'gelu'")
    weights = convert_state_dict(state_dict)
    dim = hf.get("hidden_size", 768)
    mlp_ratio = hf.get("mlp_ratio", 4)
    if swiglu:  # HF: hidden = (int(dim * mlp_ratio * 2 / 3) + 7) // 8 * 8, packed value and gate in weights_in
        mlp_ratio = weights["blocks.0.mlp.fc1.weight"].shape[0] / dim
    registers = hf.get("num_register_tokens", 4) if hf.get("model_type") == "dinov2_with_registers" else 0
    config = make_config(
        "vit", reg_tokens=registers, no_embed_class=bool(registers),
        img_size=hf.get("image_size", 224), patch_size=hf.get("patch_size", 14), in_chans=hf.get("num_channels", 3),
        num_classes=0, embed_dim=dim, depth=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 12), mlp_ratio=mlp_ratio, qkv_bias=hf.get("qkv_bias", True),
        init_values=hf.get("layerscale_value", 1.0), norm_eps=hf.get("layer_norm_eps", 1e-6),
        mlp_layer="swiglu_packed" if swiglu else "mlp", act_layer="silu" if swiglu else "gelu",
        # Dinov2Model interpolates its position embedding to every input: bicubic without antialias;
        # Dinov2WithRegistersModel with antialias, as timm
        dynamic_img_size=True, pos_embed_interp="timm" if registers else "bicubic",
        drop_path_rate=hf.get("drop_path_rate", 0.0),
    )
    return config, weights


# ----- CLIP and SigLIP image towers ------------------------------------------------------------------------------
_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
_TOWER_NAMES = [  # (Hugging Face name without "vision_model.", timm name); {} is a block index
    ("embeddings.patch_embedding.", "patch_embed.proj."),
    ("pre_layrnorm.", "norm_pre."),
    ("encoder.layers.{}.layer_norm1.", "blocks.{}.norm1."),
    ("encoder.layers.{}.layer_norm2.", "blocks.{}.norm2."),
    ("encoder.layers.{}.self_attn.out_proj.", "blocks.{}.attn.proj."),
    ("encoder.layers.{}.mlp.fc1.", "blocks.{}.mlp.fc1."),
    ("encoder.layers.{}.mlp.fc2.", "blocks.{}.mlp.fc2."),
    ("head.layernorm.", "attn_pool.norm."),
    ("head.mlp.fc1.", "attn_pool.mlp.fc1."),
    ("head.mlp.fc2.", "attn_pool.mlp.fc2."),
    ("head.attention.out_proj.", "attn_pool.proj."),
]
_TOWER_PATTERNS = [(re.compile("^" + r"(\d+)".join(re.escape(p) for p in hf.split("{}"))), ours)
                   for hf, ours in _TOWER_NAMES]
_TOWER_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)$")


def _convert_tower(state_dict: dict[str, torch.Tensor], post_norm: str) -> dict[str, torch.Tensor]:
    """Rename a CLIP/SigLIP vision tower; `post_norm` is the timm name `post_layernorm` goes to."""
    out, qkv = {}, {}
    for key, value in state_dict.items():
        key = key.removeprefix("vision_model.")
        match = _TOWER_QKV.match(key)
        if match:
            qkv.setdefault((match[1], match[3]), {})[match[2]] = value
            continue
        if key == "embeddings.class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "embeddings.position_embedding.weight":
            out["pos_embed"] = value.unsqueeze(0)
        elif key == "visual_projection.weight":  # CLIPVisionModelWithProjection: timm's head, bias zero
            out["head.weight"] = value
            out["head.bias"] = value.new_zeros(value.shape[0])
        elif key == "head.probe":
            out["attn_pool.latent"] = value
        elif key == "head.attention.in_proj_weight" or key == "head.attention.in_proj_bias":
            kind = key.rsplit("_", 1)[1]
            dim = value.shape[0] // 3
            out[f"attn_pool.q.{kind}"], out[f"attn_pool.kv.{kind}"] = value[:dim], value[dim:]
        elif key.startswith("post_layernorm."):
            out[post_norm + key.removeprefix("post_layernorm")] = value
        else:
            out[_rename(key, _TOWER_PATTERNS)] = value
    return _fuse_qkv(out, qkv, ("q", "k", "v"))


def _tower_config(hf: dict, default_act: str, **kwargs):
    """The ViT config of a CLIP/SigLIP vision tower. `dynamic_img_size` with transformers' interpolation: any
    input size the patch divides runs, as transformers does when called with `interpolate_pos_encoding=True`
    (at the saved size nothing is interpolated, so the result is the same either way)."""
    act = hf.get("hidden_act", default_act)
    if act not in _ACTS:
        raise ValueError(f"Hugging Face {hf.get('model_type')} hidden_act {act!r} is not supported; "
                         f"supported: {sorted(_ACTS)}")
    dim = hf.get("hidden_size", 768)
    return make_config(
        "vit",
        img_size=hf.get("image_size", 224), patch_size=hf.get("patch_size", 16), in_chans=hf.get("num_channels", 3),
        embed_dim=dim, depth=hf.get("num_hidden_layers", 12), num_heads=hf.get("num_attention_heads", 12),
        mlp_ratio=hf.get("intermediate_size", 4 * dim) / dim, act_layer=_ACTS[act],
        dynamic_img_size=True, pos_embed_interp="bicubic_model_dtype", **kwargs,
    )


def clip_from_hf(hf: dict, state_dict: dict[str, torch.Tensor]):
    """(ViTConfig, timm-keyed state dict) of `CLIPVisionModel` / `CLIPVisionModelWithProjection`.

    CLIP's `post_layernorm` normalises only the pooled class token (`pooler_output`), not
    `last_hidden_state`: it becomes `fc_norm` (with `norm` left out), so `forward_features` equals
    `last_hidden_state` and the pooled, pre-logits output equals `pooler_output`. The projection
    (no bias) becomes the head, with a zero bias, as timm's CLIP conversions do. Other input sizes equal
    transformers called with `interpolate_pos_encoding=True` (see `_tower_config`)."""
    projection = "visual_projection.weight" in state_dict
    config = _tower_config(hf, "quick_gelu", num_classes=state_dict["visual_projection.weight"].shape[0]
                           if projection else 0, pre_norm=True, fc_norm=True, global_pool="token",
                           norm_eps=hf.get("layer_norm_eps", 1e-5))
    return config, _convert_tower(state_dict, "fc_norm")


def siglip_from_hf(hf: dict, state_dict: dict[str, torch.Tensor]):
    """(ViTConfig, timm-keyed state dict) of `SiglipVisionModel`: no class token, `post_layernorm` is the
    final norm, the attention-pool head `head` becomes timm's `attn_pool` ('map' pooling). A tower without
    the head (`vision_use_head=False`, `pooler_output` None) gets no pooling (global_pool=''): its output is
    the normed tokens, `last_hidden_state`. Other input sizes equal transformers called with
    `interpolate_pos_encoding=True` (see `_tower_config`)."""
    has_head = any(k.removeprefix("vision_model.").startswith("head.") for k in state_dict)
    if has_head != bool(hf.get("vision_use_head", True)):
        raise ValueError(f"Hugging Face SigLIP config says vision_use_head={hf.get('vision_use_head')!r}, but the "
                         f"weights {'have' if has_head else 'lack'} the attention-pool head")
    config = _tower_config(hf, "gelu_pytorch_tanh", num_classes=0, class_token=False,
                           global_pool="map" if has_head else "", norm_eps=hf.get("layer_norm_eps", 1e-6))
    return config, _convert_tower(state_dict, "norm")


CONVERTERS = {"dinov2": from_hf, "dinov2_with_registers": from_hf, "clip_vision_model": clip_from_hf,
              "siglip_vision_model": siglip_from_hf}
