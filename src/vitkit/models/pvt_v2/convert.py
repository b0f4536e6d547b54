"""Other PVTv2 checkpoint layouts -> timm's key names (this model's).

- The original release (github.com/whai362/PVT): `patch_embed1..4`, `block1..4.j`, `norm1..4`,
  `dwconv.dwconv` (timm's `checkpoint_filter_fn`).
- Hugging Face transformers `PvtV2ForImageClassification` / `PvtV2Model` (model_type "pvt_v2"): separate
  query / key / value projections (timm's `kv` is key and value stacked), `patch_embedding` per stage.
"""

import re

import torch

from ..registry import make_config


def from_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original release's names to timm's; a timm-keyed state dict comes back unchanged."""
    if "patch_embed.proj.weight" in state_dict or not any(k.startswith("patch_embed1.") for k in state_dict):
        return state_dict
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^patch_embed1\.", "patch_embed.", key)
        key = re.sub(r"^patch_embed(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.downsample.", key)
        key = key.replace("dwconv.dwconv", "dwconv")
        key = re.sub(r"^block(\d+)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.", key)
        key = re.sub(r"^norm(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.norm.", key)
        out[key] = value
    return out


# (Hugging Face name inside `encoder.layers.i.blocks.j.`, timm name inside `stages.i.blocks.j.`)
BLOCK_NAMES = [
    ("layer_norm_1.", "norm1."),
    ("layer_norm_2.", "norm2."),
    ("attention.query.", "attn.q."),
    ("attention.proj.", "attn.proj."),
    ("attention.spatial_reduction.", "attn.sr."),
    ("attention.layer_norm.", "attn.norm."),
    ("mlp.dense1.", "mlp.fc1."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv."),
    ("mlp.dense2.", "mlp.fc2."),
]
_KV = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(key|value)\.(weight|bias)$")


def _hf_key(key: str) -> str:
    """The timm name of one HF key other than key / value (prefix `pvt_v2.` removed)."""
    if key.startswith("classifier."):
        return "head." + key.removeprefix("classifier.")
    m = re.match(r"^encoder\.layers\.(\d+)\.patch_embedding\.(proj|layer_norm)\.(.*)$", key)
    if m:
        where = "patch_embed" if m[1] == "0" else f"stages.{m[1]}.downsample"
        return f"{where}.{'norm' if m[2] == 'layer_norm' else 'proj'}.{m[3]}"
    m = re.match(r"^encoder\.layers\.(\d+)\.layer_norm\.(.*)$", key)
    if m:
        return f"stages.{m[1]}.norm.{m[2]}"
    m = re.match(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.*)$", key)
    if m:
        for hf, ours in BLOCK_NAMES:
            if m[3].startswith(hf):
                return f"stages.{m[1]}.blocks.{m[2]}.{ours}{m[3].removeprefix(hf)}"
    raise ValueError(f"Hugging Face PVTv2 checkpoint: no vitkit equivalent for tensor {key!r}")


def _one_per_stage(hf_config: dict, key: str, expected: list) -> bool:
    return list(hf_config.get(key, expected)) == expected


def from_hf(hf_config: dict, hf_state_dict: dict[str, torch.Tensor]):
    """(PvtV2Config, timm-keyed state dict) of a transformers `PvtV2ForImageClassification` / `PvtV2Model`."""
    depths = list(hf_config.get("depths", [2, 2, 2, 2]))
    stages = len(depths)
    if hf_config.get("num_encoder_blocks", stages) != stages:
        raise ValueError(f"Hugging Face PVTv2 config: num_encoder_blocks={hf_config['num_encoder_blocks']} but "
                         f"depths has {stages} stages")
    unsupported = [name for name, differs in [
        (f"patch_sizes={hf_config.get('patch_sizes')}", not _one_per_stage(hf_config, "patch_sizes",
                                                                           [7] + [3] * (stages - 1))),
        (f"strides={hf_config.get('strides')}", not _one_per_stage(hf_config, "strides", [4] + [2] * (stages - 1))),
        (f"hidden_act={hf_config.get('hidden_act')!r}", hf_config.get("hidden_act", "gelu") != "gelu"),
    ] if differs]
    if unsupported:
        raise ValueError(f"Hugging Face PVTv2 config: vitkit's PVTv2 (timm's layout: 7x7 stride-4 stem, 3x3 stride-2 "
                         f"downsampling, GELU) has no equivalent of {', '.join(unsupported)}")
    has_head = any(k.startswith("classifier.") for k in hf_state_dict)
    image_size = hf_config.get("image_size", 224)
    if isinstance(image_size, list | tuple):
        if len(set(image_size)) != 1:
            raise ValueError(f"Hugging Face PVTv2 config: vitkit evaluates at a square size, got image_size "
                             f"{image_size}")
        image_size = image_size[0]
    config = make_config(
        "pvt_v2", img_size=image_size, in_chans=hf_config.get("num_channels", 3),
        num_classes=len(hf_config.get("id2label") or {}) if has_head else 0, depths=tuple(depths),
        embed_dims=tuple(hf_config.get("hidden_sizes", [32, 64, 160, 256])),
        num_heads=tuple(hf_config.get("num_attention_heads", [1, 2, 5, 8])),
        sr_ratios=tuple(hf_config.get("sr_ratios", [8, 4, 2, 1])),
        mlp_ratios=tuple(hf_config.get("mlp_ratios", [8, 8, 4, 4])), qkv_bias=hf_config.get("qkv_bias", True),
        linear=hf_config.get("linear_attention", False), norm_eps=hf_config.get("layer_norm_eps", 1e-6),
    )
    out, kv = {}, {}
    for key, value in hf_state_dict.items():
        key = key.removeprefix("pvt_v2.")
        m = _KV.match(key)
        if m:
            kv.setdefault((m[1], m[2], m[4]), {})[m[3]] = value
        else:
            out[_hf_key(key)] = value
    for (stage, block, kind), parts in kv.items():
        if set(parts) != {"key", "value"}:
            raise ValueError(f"Hugging Face PVTv2 checkpoint: stage {stage} block {block} lacks a key or value {kind}")
        out[f"stages.{stage}.blocks.{block}.attn.kv.{kind}"] = torch.cat([parts["key"], parts["value"]])
    return config, out
