"""Attention probabilities from models that run fused attention.

Fused kernels never materialise the attention matrix, which is why attention hooks stop working in
timm once SDPA is on. Here each attention module computes the probabilities beside the fused call
while a capture is active; outputs are unchanged and nothing is paid outside the `with` block.
"""

from contextlib import contextmanager

import torch
from torch import nn

from ..layers import Attention


@contextmanager
def capture_attention(model: nn.Module):
    """Yield a list that fills with one (B, heads, N, N) tensor per attention module call, in order.

        with vitkit.capture_attention(model) as maps:
            model(images)
        maps[-1][:, :, 0, model.num_prefix_tokens:]   # class-token attention of the last block
    """
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no vitkit attention modules to capture")
    maps: list[torch.Tensor] = []
    for module in modules:
        module.on_attention = maps.append
    try:
        yield maps
    finally:
        for module in modules:
            module.on_attention = None


def attention_rollout(maps: list[torch.Tensor], head_fusion: str = "mean") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): product of per-layer attention with the residual
    folded in. Returns (B, N, N); row 0 is the class token's attribution over all tokens."""
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be one of {sorted(fuse)}, got {head_fusion!r}")
    if not maps:
        raise ValueError("no attention maps given; capture them with capture_attention(model)")
    rollout = None
    for attn in maps:
        a = fuse[head_fusion](attn.float())
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout
