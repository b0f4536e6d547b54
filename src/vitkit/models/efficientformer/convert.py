"""The original EfficientFormer release's checkpoint names (github.com/snap-research/EfficientFormer) ->
timm's (this model's), as timm's `checkpoint_filter_fn`.

The release keeps the stages and the downsampling embeddings in one list, `network`: stage i's blocks at
`network.{2i}`, the embedding that starts stage i + 1 (`proj`, `norm`) at `network.{2i + 1}` (timm's default
`downsamples`, which every released model has). Its stem is `patch_embed.0/1/3/4` (convolution, BatchNorm,
ReLU, convolution, BatchNorm), its LayerScales `layer_scale_1` / `layer_scale_2`, its distillation head
`dist_head`. There is no Hugging Face layout: transformers removed EfficientFormer.
"""

import re

import torch

_STEM = {"patch_embed.0.": "stem.conv1.", "patch_embed.1.": "stem.norm1.", "patch_embed.3.": "stem.conv2.",
         "patch_embed.4.": "stem.norm2."}


def is_original(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("network.", "patch_embed.")) for k in state_dict)


def _key(key: str) -> str:
    for old, new in _STEM.items():
        if key.startswith(old):
            return new + key.removeprefix(old)
    m = re.match(r"^network\.(\d+)\.(proj|norm)\.(.*)$", key)
    if m:  # network.{2i+1}: the embedding that starts stage i + 1
        return f"stages.{(int(m[1]) + 1) // 2}.downsample.{'conv' if m[2] == 'proj' else 'norm'}.{m[3]}"
    m = re.match(r"^network\.(\d+)\.(\d+)\.(.*)$", key)
    if m:  # network.{2i}: stage i's blocks
        key = f"stages.{int(m[1]) // 2}.blocks.{m[2]}.{m[3]}"
    key = re.sub(r"\blayer_scale_([12])$", r"ls\1.gamma", key)
    return "head_dist." + key.removeprefix("dist_head.") if key.startswith("dist_head.") else key


def from_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original release's names to timm's; a timm-keyed state dict comes back unchanged."""
    if not is_original(state_dict):
        return state_dict
    return {_key(k): v for k, v in state_dict.items()}
