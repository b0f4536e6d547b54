"""Hugging Face transformers ViT / DeiT: config and key names to vitkit's (= timm's), and back (the bench's
transformers peer)."""

import re

import torch

from ..registry import make_config
from .model import ViTConfig

_HF_ACT = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "relu": "relu", "silu": "silu"}
_HF_PREFIXES = ("vit.", "deit.")


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


# One table for both directions: (Hugging Face name, vitkit name); {} stands for a block index.
_NAMES = [
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.distillation_token", "dist_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("encoder.layer.{}.layernorm_before.", "blocks.{}.norm1."),
    ("encoder.layer.{}.layernorm_after.", "blocks.{}.norm2."),
    ("encoder.layer.{}.attention.output.dense.", "blocks.{}.attn.proj."),
    ("encoder.layer.{}.intermediate.dense.", "blocks.{}.mlp.fc1."),
    ("encoder.layer.{}.output.dense.", "blocks.{}.mlp.fc2."),
    ("layernorm.", "norm."),
]


def _pattern(template: str) -> str:
    return "^" + r"(\d+)".join(re.escape(part) for part in template.split("{}"))


def _replacement(template: str) -> str:
    return template.replace("{}", r"\1")


_RENAMES = [(_pattern(hf), _replacement(ours)) for hf, ours in _NAMES] + [
    (r"^(classifier|cls_classifier)\.", "head."),  # the classifier names depend on the model; see hf_state_dict_from
    (r"^distillation_classifier\.", "head_dist."),
]
_TO_HF = [(_pattern(ours), _replacement(hf)) for hf, ours in _NAMES]
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


def hf_config_from(config) -> dict:
    """The Hugging Face ViT/DeiT config of a vitkit model, or a ValueError naming what has no equivalent."""
    c = config
    if not isinstance(c, ViTConfig):
        raise ValueError(f"no transformers ViT/DeiT equals a {type(c).__name__} model")
    unsupported = [name for name, differs in [
        ("conv_stem", bool(c.conv_stem)), (f"global_pool={c.global_pool!r}", c.global_pool != "token"),
        ("reg_tokens", c.reg_tokens > 0), ("no_embed_class", c.no_embed_class), ("pre_norm", c.pre_norm),
        ("final_norm=False", not c.final_norm), ("fc_norm", bool(c.fc_norm)),
        ("layer scale", c.init_values is not None), ("qk_norm", c.qk_norm),
    ] if differs]
    if unsupported:
        raise ValueError(f"no transformers ViT/DeiT equals this model: it has {', '.join(unsupported)}")
    return {
        "model_type": "deit" if c.distilled else "vit",
        "architectures": ["DeiTForImageClassificationWithTeacher" if c.distilled else "ViTForImageClassification"],
        "image_size": c.img_size, "patch_size": c.patch_size, "num_channels": c.in_chans,
        "hidden_size": c.embed_dim, "num_hidden_layers": c.depth, "num_attention_heads": c.num_heads,
        "intermediate_size": int(c.embed_dim * c.mlp_ratio), "qkv_bias": c.qkv_bias, "layer_norm_eps": c.norm_eps,
        "hidden_act": {v: k for k, v in _HF_ACT.items() if k != "gelu_new"}[c.act_layer],
        "id2label": {str(i): str(i) for i in range(c.num_classes)},
    }


def hf_state_dict_from(state_dict: dict[str, torch.Tensor], distilled: bool = False) -> dict[str, torch.Tensor]:
    """vitkit (= timm) names to Hugging Face's checkpoint names; the inverse of `convert_hf_state_dict`."""
    prefix = "deit." if distilled else "vit."
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if m:
            for part, chunk in zip(("query", "key", "value"), value.chunk(3), strict=True):
                out[f"{prefix}encoder.layer.{m[1]}.attention.attention.{part}.{m[2]}"] = chunk.contiguous()
        elif key.startswith("head_dist."):
            out[key.replace("head_dist.", "distillation_classifier.", 1)] = value
        elif key.startswith("head."):
            out[key.replace("head.", "cls_classifier." if distilled else "classifier.", 1)] = value
        else:
            for pattern, repl in _TO_HF:
                key = re.sub(pattern, repl, key)
            out[prefix + key] = value
    return out


def from_hf(hf: dict, state_dict: dict[str, torch.Tensor]):
    """(ViTConfig, timm-keyed state dict) of a `ViTForImageClassification` / `DeiTForImageClassification...`
    / `ViTModel` directory."""
    return config_from_hf(hf), convert_hf_state_dict(state_dict)


def transformers_peer(config):
    """(transformers class name, HF config dict, state-dict converter) of the transformers model equal to `config`:
    ViT / DeiT, else the foundation tower (DINOv2, CLIP, SigLIP; hf_foundation_export.py) the config is, else a
    ValueError saying why neither is."""
    try:
        hf = hf_config_from(config)
    except ValueError as plain:
        if not isinstance(config, ViTConfig):
            raise
        from .hf_foundation_export import foundation_peer

        return foundation_peer(config, plain)
    return hf["architectures"][0], hf, lambda state_dict: hf_state_dict_from(state_dict, config.distilled)
