"""Hugging Face transformers ViT / DeiT checkpoints: config and key names to vitkit's (= timm's)."""

import json
import re
from pathlib import Path

import torch

from ..models import make_config

_HF_ACT = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "relu": "relu", "silu": "silu"}
_HF_PREFIXES = ("vit.", "deit.")


def is_hf_directory(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and "model_type" in json.loads(config.read_text())


def config_from_hf(hf: dict, num_classes: int | None = None):
    model_type = hf.get("model_type")
    if model_type not in ("vit", "deit"):
        raise ValueError(f"Hugging Face model_type {model_type!r} is not supported; supported: 'vit', 'deit'")
    act = hf.get("hidden_act", "gelu")
    if act not in _HF_ACT:
        raise ValueError(f"Hugging Face hidden_act {act!r} is not supported; supported: {sorted(_HF_ACT)}")
    architectures = hf.get("architectures") or []
    distilled = any("WithTeacher" in a for a in architectures)
    if num_classes is None:
        num_classes = len(hf["id2label"]) if hf.get("id2label") else 0
    dim = hf["hidden_size"]
    return make_config(
        "vit",
        img_size=hf["image_size"], patch_size=hf["patch_size"], in_chans=hf.get("num_channels", 3),
        num_classes=num_classes, embed_dim=dim, depth=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], mlp_ratio=hf["intermediate_size"] / dim,
        qkv_bias=hf.get("qkv_bias", True), distilled=distilled, act_layer=_HF_ACT[act],
        norm_eps=hf.get("layer_norm_eps", 1e-12),
    )


def is_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(_HF_PREFIXES) or k.startswith("embeddings.patch_embeddings") for k in state_dict)


_RENAMES = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.distillation_token", "dist_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^(classifier|cls_classifier)\.", "head."),
    (r"^distillation_classifier\.", "head_dist."),
]
# Weights the vitkit model has no use for: HF's unused mask token and pooler.
_DROPPED = re.compile(r"(embeddings\.mask_token|^pooler\.)")


def convert_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, qkv = {}, {}
    for key, value in state_dict.items():
        for prefix in _HF_PREFIXES:
            key = key.removeprefix(prefix)
        if _DROPPED.search(key):
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)", key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    for (layer, kind), parts in qkv.items():
        missing = {"query", "key", "value"} - set(parts)
        if missing:
            raise ValueError(f"Hugging Face checkpoint: layer {layer} has no attention {sorted(missing)} {kind}")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def read_hf_directory(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from .io import read_state_dict

    hf_config = json.loads((path / "config.json").read_text())
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return hf_config, convert_hf_state_dict(read_state_dict(path / name))
    raise FileNotFoundError(f"{path} has a Hugging Face config.json but no model.safetensors or pytorch_model.bin")
