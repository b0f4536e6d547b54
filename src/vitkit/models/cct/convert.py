"""Official CCT checkpoints (github.com/SHI-Labs/Compact-Transformers, e.g. `cct_7_3x1_32_cifar10_300epochs.pth`)
-> this model's key names.

The official model is `tokenizer` (the same layout as here) and `classifier` (a `TransformerClassifier`):

    classifier.positional_emb                   -> pos_embed
    classifier.blocks.{i}.pre_norm              -> blocks.{i}.norm1
    classifier.blocks.{i}.self_attn.{qkv,proj}  -> blocks.{i}.attn.{qkv,proj}
    classifier.blocks.{i}.norm1                 -> blocks.{i}.norm2
    classifier.blocks.{i}.linear1 / linear2     -> blocks.{i}.mlp.fc1 / fc2
    classifier.norm                             -> norm
    classifier.attention_pool                   -> attention_pool
    classifier.fc                               -> head

A `{"model": ...}` or `{"state_dict": ...}` wrapper and DistributedDataParallel's `module.` prefix are
undone; a state dict already in this model's names comes back unchanged (as a new dict).
"""

import re

import torch

_BLOCK_RENAMES = (
    (r"\.pre_norm\.", ".norm1."),
    (r"\.norm1\.", ".norm2."),
    (r"\.self_attn\.", ".attn."),
    (r"\.linear1\.", ".mlp.fc1."),
    (r"\.linear2\.", ".mlp.fc2."),
)
_TOP_RENAMES = {"positional_emb": "pos_embed", "fc.weight": "head.weight", "fc.bias": "head.bias"}


def _rename(key: str) -> str:
    key = key.removeprefix("classifier.")
    if key in _TOP_RENAMES:
        return _TOP_RENAMES[key]
    if key.startswith("fc."):
        return "head." + key[3:]
    if key.startswith("blocks."):
        index, rest = re.match(r"blocks\.(\d+)(\..*)", key).groups()
        # one pass per key, so that the official norm1 -> norm2 does not also catch pre_norm -> norm1
        for pattern, new in _BLOCK_RENAMES:
            if re.match(pattern, rest):
                return f"blocks.{index}{re.sub(pattern, new, rest, count=1)}"
    return key


def from_original(state_dict: dict) -> dict[str, torch.Tensor]:
    """Official (or already converted) CCT weights -> this model's names."""
    for wrapper in ("model", "state_dict"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if not any(k.startswith("classifier.") for k in state_dict):
        return dict(state_dict)
    return {_rename(k): v for k, v in state_dict.items()}
