"""vitkit foundation-model towers -> the equal transformers model: DINOv2 (`Dinov2Model`,
`Dinov2WithRegistersModel`, and their `...ForImageClassification` for a model with a head), CLIP
(`CLIPVisionModel`, `CLIPVisionModelWithProjection`) and SigLIP (`SiglipVisionModel`). The bench's
transformers peers, the reverse of hf_foundation.py.

Which one a config is comes from what only that tower has (`foundation_peer`): layer scale (DINOv2), a norm
before the blocks (CLIP), attention pooling without a class token (SigLIP). Each exporter names what else
of the config transformers' model cannot express."""

import re

import torch

from .model import ViTConfig

# vitkit act_layer -> transformers hidden_act, for the activations each tower's importer reads back
_DINOV2_ACTS = {"gelu": "gelu"}
_TOWER_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}

_DINOV2_BLOCK = [  # (vitkit name inside blocks.i., transformers name inside encoder.layer.i.)
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("attn.proj.", "attention.output.dense."),
    ("ls1.gamma", "layer_scale1.lambda1"),
    ("ls2.gamma", "layer_scale2.lambda1"),
]
_TOWER_BLOCK = [  # (vitkit name inside blocks.i., transformers name inside encoder.layers.i.)
    ("norm1.", "layer_norm1."),
    ("norm2.", "layer_norm2."),
    ("attn.proj.", "self_attn.out_proj."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
]
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")
_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")


def _common_refusals(c: ViTConfig) -> list[tuple[str, bool]]:
    """What none of transformers' towers has: (what the model has, whether it has it)."""
    return [("conv_stem", bool(c.conv_stem)), ("a distillation token", c.distilled), ("qk_norm", c.qk_norm),
            ("final_norm=False", not c.final_norm)]


def _refuse(tower: str, checks: list[tuple[str, bool]]) -> None:
    found = [name for name, has in checks if has]
    if found:
        raise ValueError(f"nor does transformers' {tower}: it has {', '.join(found)}")


def _split_qkv(value: torch.Tensor, names: tuple[str, str, str]) -> dict[str, torch.Tensor]:
    return {name: chunk.contiguous() for name, chunk in zip(names, value.chunk(3), strict=True)}


def _rename_block(key: str, table, template: str) -> str | None:
    m = _BLOCK.match(key)
    if m:
        for ours, hf in table:
            if m[2].startswith(ours):
                return template.format(m[1]) + hf + m[2].removeprefix(ours)
    return None


# ----- DINOv2 ---------------------------------------------------------------------------------------------------
def _hf_mlp_ratio(dim: int, mlp_ratio: float, swiglu: bool) -> int | None:
    """The integer `mlp_ratio` (transformers' Dinov2Config takes no other) from which transformers builds
    vitkit's MLP width; None when none does. SwiGLU: transformers keeps two thirds of dim * mlp_ratio, rounded
    up to a multiple of 8, as the width of each of value and gate (vitkit's packed fc1 holds both)."""
    width = int(dim * mlp_ratio)
    for ratio in range(1, 65):
        if swiglu and 2 * ((int(dim * ratio * 2 / 3) + 7) // 8 * 8) == width:
            return ratio
        if not swiglu and dim * ratio == width:
            return ratio
    return None


def dinov2_config_from(c: ViTConfig) -> dict:
    swiglu = c.mlp_layer == "swiglu_packed"
    ratio = _hf_mlp_ratio(c.embed_dim, c.mlp_ratio, swiglu)
    _refuse("Dinov2Model (the ViT with layer scale)", [
        *_common_refusals(c),
        (f"global_pool={c.global_pool!r}", c.global_pool != "token"), ("pre_norm", c.pre_norm),
        ("fc_norm", bool(c.fc_norm)),
        ("registers inside the position embedding (no_embed_class=False)", c.reg_tokens > 0 and not c.no_embed_class),
        ("no_embed_class without registers", c.no_embed_class and not c.reg_tokens),
        ("qkv_bias=False", not c.qkv_bias),
        (f"act_layer={c.act_layer!r}", (c.act_layer != "silu") if swiglu else c.act_layer not in _DINOV2_ACTS),
        (f"an MLP width {int(c.embed_dim * c.mlp_ratio)} no integer mlp_ratio gives", ratio is None),
    ])
    registers = c.reg_tokens > 0
    model_type = "dinov2_with_registers" if registers else "dinov2"
    name = "Dinov2WithRegisters" if registers else "Dinov2"
    hf = {
        "model_type": model_type,
        "architectures": [f"{name}ForImageClassification" if c.num_classes else f"{name}Model"],
        "image_size": c.img_size, "patch_size": c.patch_size, "num_channels": c.in_chans,
        "hidden_size": c.embed_dim, "num_hidden_layers": c.depth, "num_attention_heads": c.num_heads,
        "mlp_ratio": ratio, "use_swiglu_ffn": swiglu, "hidden_act": "gelu",
        "qkv_bias": c.qkv_bias, "layer_norm_eps": c.norm_eps, "layerscale_value": c.init_values,
        "drop_path_rate": c.drop_path_rate, "id2label": {str(i): str(i) for i in range(c.num_classes)},
    }
    if registers:
        hf["num_register_tokens"] = c.reg_tokens
    return hf


def dinov2_state_dict_from(state_dict: dict[str, torch.Tensor], c: ViTConfig) -> dict[str, torch.Tensor]:
    """vitkit names to the checkpoint names transformers saves. With registers, transformers adds the position
    embedding to the class token too: it gets a zero one (timm's class token already holds its own). A head
    becomes transformers' classifier on [class token, mean patch token] with zero weights on the mean."""
    registers = c.reg_tokens > 0
    prefix = ("dinov2_with_registers." if registers else "dinov2.") if c.num_classes else ""
    fc = ("weights_in.", "weights_out.") if c.mlp_layer == "swiglu_packed" else ("fc1.", "fc2.")
    table = [*_DINOV2_BLOCK, ("mlp.fc1.", "mlp." + fc[0]), ("mlp.fc2.", "mlp." + fc[1])]
    out = {}
    for key, value in state_dict.items():
        if m := _QKV.match(key):
            for part, chunk in _split_qkv(value, ("query", "key", "value")).items():
                out[f"{prefix}encoder.layer.{m[1]}.attention.attention.{part}.{m[2]}"] = chunk
        elif key == "cls_token":
            out[prefix + "embeddings.cls_token"] = value
        elif key == "reg_token":
            out[prefix + "embeddings.register_tokens"] = value
        elif key == "pos_embed":
            if c.no_embed_class:
                value = torch.cat([value.new_zeros(1, 1, value.shape[-1]), value], dim=1)
            out[prefix + "embeddings.position_embeddings"] = value
        elif key.startswith("patch_embed.proj."):
            out[prefix + "embeddings.patch_embeddings.projection." + key.removeprefix("patch_embed.proj.")] = value
        elif key.startswith("norm."):
            out[prefix + "layernorm." + key.removeprefix("norm.")] = value
        elif key == "head.weight":
            out["classifier.weight"] = torch.cat([value, torch.zeros_like(value)], dim=1)
        elif key == "head.bias":
            out["classifier.bias"] = value
        elif (name := _rename_block(key, table, "encoder.layer.{}.")) is not None:
            out[prefix + name] = value
        else:
            raise ValueError(f"vitkit ViT tensor {key!r} has no transformers DINOv2 equal")
    out[prefix + "embeddings.mask_token"] = state_dict["pos_embed"].new_zeros(1, c.embed_dim)  # unused: masking only
    return out


# ----- CLIP and SigLIP image towers --------------------------------------------------------------------------------
def _tower_refusals(c: ViTConfig) -> list[tuple[str, bool]]:
    return [*_common_refusals(c), ("layer scale", c.init_values is not None), ("reg_tokens", c.reg_tokens > 0),
            ("qkv_bias=False", not c.qkv_bias), (f"mlp_layer={c.mlp_layer!r}", c.mlp_layer != "mlp"),
            (f"act_layer={c.act_layer!r}", c.act_layer not in _TOWER_ACTS)]


def clip_config_from(c: ViTConfig) -> dict:
    _refuse("CLIPVisionModel (the ViT with a norm before the blocks)", [
        *_tower_refusals(c),
        (f"global_pool={c.global_pool!r}", c.global_pool != "token"), ("no class token", not c.class_token),
        ("no_embed_class", c.no_embed_class),
    ])
    return {
        "model_type": "clip_vision_model",
        "architectures": ["CLIPVisionModelWithProjection" if c.num_classes else "CLIPVisionModel"],
        "image_size": c.img_size, "patch_size": c.patch_size, "num_channels": c.in_chans,
        "hidden_size": c.embed_dim, "num_hidden_layers": c.depth, "num_attention_heads": c.num_heads,
        "intermediate_size": int(c.embed_dim * c.mlp_ratio), "hidden_act": _TOWER_ACTS[c.act_layer],
        "layer_norm_eps": c.norm_eps, "projection_dim": c.num_classes or 512,
    }


def _tower_block(key: str, value: torch.Tensor, prefix: str, out: dict) -> bool:
    if m := _QKV.match(key):
        for part, chunk in _split_qkv(value, ("q_proj", "k_proj", "v_proj")).items():
            out[f"{prefix}encoder.layers.{m[1]}.self_attn.{part}.{m[2]}"] = chunk
        return True
    name = _rename_block(key, _TOWER_BLOCK, "encoder.layers.{}.")
    if name is not None:
        out[prefix + name] = value
    return name is not None


def clip_state_dict_from(state_dict: dict[str, torch.Tensor], c: ViTConfig) -> dict[str, torch.Tensor]:
    """vitkit names to CLIP's. `post_layernorm` is `fc_norm` (what clip_from_hf makes) or, in timm's layout,
    the final `norm`: CLIP normalises the pooled class token only, the same on the pooled output. The head
    becomes the bias-free visual projection, so its bias must be zero."""
    prefix, out = "vision_model.", {}
    for key, value in state_dict.items():
        if _tower_block(key, value, prefix, out):
            continue
        if key == "cls_token":
            out[prefix + "embeddings.class_embedding"] = value.reshape(-1)
        elif key == "pos_embed":
            out[prefix + "embeddings.position_embedding.weight"] = value[0]
        elif key == "patch_embed.proj.weight":
            out[prefix + "embeddings.patch_embedding.weight"] = value
        elif key.startswith("norm_pre."):
            out[prefix + "pre_layrnorm." + key.removeprefix("norm_pre.")] = value
        elif key.startswith(("fc_norm.", "norm.")):
            out[prefix + "post_layernorm." + key.split(".", 1)[1]] = value
        elif key == "head.weight":
            out["visual_projection.weight"] = value
        elif key == "head.bias":
            if value.abs().max() > 0:
                raise ValueError("no transformers CLIP tower equals this model: its head has a non-zero bias, and "
                                 "CLIP's visual projection has none")
        else:
            raise ValueError(f"vitkit ViT tensor {key!r} has no transformers CLIP equal")
    return out


def siglip_config_from(c: ViTConfig) -> dict:
    _refuse("SiglipVisionModel (the ViT with attention pooling)", [
        *_tower_refusals(c), ("a class token", c.class_token), ("pre_norm", c.pre_norm),
        ("fc_norm", bool(c.fc_norm)),
        (f"a {c.num_classes}-class head (SiglipVisionModel has none; SiglipForImageClassification averages the "
         "tokens instead of the attention pool): build it with num_classes=0", c.num_classes > 0),
    ])
    return {
        "model_type": "siglip_vision_model", "architectures": ["SiglipVisionModel"],
        "image_size": c.img_size, "patch_size": c.patch_size, "num_channels": c.in_chans,
        "hidden_size": c.embed_dim, "num_hidden_layers": c.depth, "num_attention_heads": c.num_heads,
        "intermediate_size": int(c.embed_dim * c.mlp_ratio), "hidden_act": _TOWER_ACTS[c.act_layer],
        "layer_norm_eps": c.norm_eps, "vision_use_head": True,
    }


_POOL_NAMES = [("attn_pool.proj.", "head.attention.out_proj."), ("attn_pool.norm.", "head.layernorm."),
               ("attn_pool.mlp.fc1.", "head.mlp.fc1."), ("attn_pool.mlp.fc2.", "head.mlp.fc2.")]


def siglip_state_dict_from(state_dict: dict[str, torch.Tensor], c: ViTConfig) -> dict[str, torch.Tensor]:
    """vitkit names to SigLIP's (as `SiglipVisionModel.save_pretrained` writes them); the attention pool's
    q and kv projections pack into `nn.MultiheadAttention`'s in_proj."""
    out = {}
    for key, value in state_dict.items():
        if _tower_block(key, value, "", out):
            continue
        if key == "pos_embed":
            out["embeddings.position_embedding.weight"] = value[0]
        elif key.startswith("patch_embed.proj."):
            out["embeddings.patch_embedding." + key.removeprefix("patch_embed.proj.")] = value
        elif key.startswith("norm."):
            out["post_layernorm." + key.removeprefix("norm.")] = value
        elif key == "attn_pool.latent":
            out["head.probe"] = value
        elif key.startswith(("attn_pool.q.", "attn_pool.kv.")):
            kind = key.rsplit(".", 1)[1]
            out[f"head.attention.in_proj_{kind}"] = torch.cat([state_dict[f"attn_pool.q.{kind}"],
                                                               state_dict[f"attn_pool.kv.{kind}"]])
        elif any(key.startswith(ours) for ours, _ in _POOL_NAMES):
            ours, hf = next((o, h) for o, h in _POOL_NAMES if key.startswith(o))
            out[hf + key.removeprefix(ours)] = value
        else:
            raise ValueError(f"vitkit ViT tensor {key!r} has no transformers SigLIP equal")
    return out


# ----- which tower ------------------------------------------------------------------------------------------------
_TOWERS = {  # name -> (what only it has, config exporter, state-dict exporter)
    "dinov2": (lambda c: c.init_values is not None, dinov2_config_from, dinov2_state_dict_from),
    "clip": (lambda c: c.pre_norm, clip_config_from, clip_state_dict_from),
    "siglip": (lambda c: c.global_pool == "map" and not c.class_token, siglip_config_from, siglip_state_dict_from),
}


def foundation_peer(config: ViTConfig, plain: ValueError):
    """(transformers class name, HF config dict, state-dict converter) of the DINOv2 / CLIP / SigLIP tower
    equal to `config`; `plain` is why no transformers ViT/DeiT equals it, raised (with why each tower the
    config looks like does not either) when none does."""
    reasons = []
    for _, (looks_like, config_from, state_dict_from) in _TOWERS.items():
        if not looks_like(config):
            continue
        try:
            hf = config_from(config)
        except ValueError as err:
            reasons.append(str(err))
            continue
        return hf["architectures"][0], hf, lambda state_dict, f=state_dict_from: f(state_dict, config)
    raise ValueError("; ".join([str(plain), *reasons])) from None
