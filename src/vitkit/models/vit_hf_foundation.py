"""Hugging Face `Dinov2Model` checkpoints to vitkit's (= timm's) ViT config and parameter names.

Only the backbone: `Dinov2ForImageClassification`'s head reads [class token, mean patch token] concatenated,
which timm's ViT has no equal of, so such checkpoints are refused rather than half loaded."""

import re

import torch

from .registry import make_config, register_hf_converter

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
    for key, value in state_dict.items():
        key = key.removeprefix("dinov2.")
        if key == "embeddings.mask_token":
            continue
        match = _QKV.match(key)
        if match:
            qkv.setdefault((match[1], match[3]), {})[match[2]] = value
            continue
        for pattern, ours in _PATTERNS:
            m = pattern.match(key)
            if m:
                key = ours.format(*m.groups()) + key[m.end():]
                break
        out[key] = value
    for (block, kind), parts in qkv.items():
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
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
    config = make_config(
        "vit",
        img_size=hf.get("image_size", 224), patch_size=hf.get("patch_size", 14), in_chans=hf.get("num_channels", 3),
        num_classes=0, embed_dim=dim, depth=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 12), mlp_ratio=mlp_ratio, qkv_bias=hf.get("qkv_bias", True),
        init_values=hf.get("layerscale_value", 1.0), norm_eps=hf.get("layer_norm_eps", 1e-6),
        mlp_layer="swiglu_packed" if swiglu else "mlp", act_layer="silu" if swiglu else "gelu",
        dynamic_img_size=True,  # Dinov2Model interpolates its position embedding to every input
        drop_path_rate=hf.get("drop_path_rate", 0.0),
    )
    return config, weights


register_hf_converter(("dinov2",), from_hf)
