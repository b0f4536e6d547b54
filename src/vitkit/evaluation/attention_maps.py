"""Attention probabilities from models that run fused attention.

Fused kernels never materialise the attention matrix, which is why attention hooks stop working in
timm once SDPA is on. Here each attention module computes the probabilities beside the fused call
while a capture is active; outputs are unchanged and nothing is paid outside the `with` block.

The capability is an attribute: any module with an `on_attention` attribute (None when nobody listens)
calls it with its probabilities. Shapes differ per family:

- ViT family (`vitkit.layers.Attention`): (B, heads, N, N) over the whole token sequence.
- Swin (`WindowAttention`): (B, num_windows, heads, N, N) with N = window * window, per window; in shifted
  blocks the windows are those of the cyclically shifted grid (see `vitkit.models.swin.model`).
- ConvNeXt and other attention-free models: nothing to capture (Grad-CAM instead: `vitkit.evaluation.explanations`).
"""

from contextlib import contextmanager

import torch
from torch import nn


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Every submodule that declares the attention-map capability (an `on_attention` attribute)."""
    return [m for m in model.modules() if hasattr(m, "on_attention")]


def _no_attention_error(model: nn.Module) -> ValueError:
    """Points an attention-free model to what does work on it: gradients on its feature maps."""
    info = getattr(model, "feature_info", None)
    layer = f" (its last layer is {info[-1].module})" if info else ""
    return ValueError(f"{type(model).__name__} has no attention modules to capture (none declares `on_attention`); "
                      f"use Grad-CAM on the feature maps forward_intermediates returns instead{layer}: "
                      "vitkit.evaluation.explanations.grad_cam(model, images)")


@contextmanager
def capture_attention(model: nn.Module, grad: bool = False):
    """Yield a list that fills with one probability tensor per attention module call, in call order
    (shapes per family in the module docstring).

        with vitkit.capture_attention(model) as maps:
            model(images)
        maps[-1][:, :, 0, model.num_prefix_tokens:]   # ViT: class-token attention of the last block

    `grad=True` switches modules that offer it (`attention_grad`, the ViT family's `Attention`) to explicit
    attention whose probabilities stay in the autograd graph, for torch.autograd.grad(score, maps);
    outputs then match the fused path within float tolerance instead of bit for bit.
    """
    modules = attention_modules(model)
    if not modules:
        raise _no_attention_error(model)
    if grad and not all(hasattr(m, "attention_grad") for m in modules):
        kinds = sorted({type(m).__name__ for m in modules if not hasattr(m, "attention_grad")})
        raise ValueError(f"{type(model).__name__}: {', '.join(kinds)} cannot give attention probabilities with "
                         f"gradients (no `attention_grad` mode); capture with grad=False")
    maps: list[torch.Tensor] = []
    for module in modules:
        module.on_attention = maps.append
        if grad:
            module.attention_grad = True
    try:
        yield maps
    finally:
        for module in modules:
            module.on_attention = None
            if grad:
                module.attention_grad = False


def _check_rollout_maps(maps: list[torch.Tensor]) -> None:
    """Rollout multiplies layer maps, so all must be (B, heads, N, N) over one and the same token sequence."""
    if not maps:
        raise ValueError("no attention maps given; capture them with capture_attention(model)")
    if any(m.ndim == 5 for m in maps):
        raise ValueError("attention_rollout needs (B, heads, N, N) maps over one token sequence, got 5-d "
                         "(B, windows, heads, N, N) per-window maps (Swin): windows, shifted every other block, "
                         "do not compose into a rollout; inspect the per-window maps or use Grad-CAM instead")
    shapes = {tuple(m.shape[-2:]) for m in maps}
    if any(m.ndim != 4 for m in maps) or len(shapes) != 1 or any(h != w for h, w in shapes):
        raise ValueError(f"attention_rollout needs (B, heads, N, N) maps with one N for all layers, got shapes "
                         f"{sorted({tuple(m.shape) for m in maps})}")


def attention_rollout(maps: list[torch.Tensor], head_fusion: str = "mean") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): product of per-layer attention with the residual
    folded in. Returns (B, N, N); row 0 is the class token's attribution over all tokens.

    Only for maps over one token sequence (ViT family); Swin's per-window maps are refused."""
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be one of {sorted(fuse)}, got {head_fusion!r}")
    _check_rollout_maps(maps)
    rollout = None
    for attn in maps:
        a = fuse[head_fusion](attn.float())
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout
