"""Token pruning (EViT; Liang et al., ICLR 2022): keep the patch tokens the class token attends to.

At chosen blocks, after attention, the top ceil(keep * n) patch tokens by class-token attention
(averaged over heads) are kept and the rest are fused into one token, weighted by that attention.
Token sizes and sources are carried, so EViT composes with ToMe (the fused token counts as one token).
"""

import math

import torch

from .token_state import TokenState


def default_prune_blocks(depth: int) -> list[int]:
    """EViT prunes at blocks 4, 7 and 10 of a 12-block DeiT: a quarter, half and three quarters in."""
    return sorted({i for i in (depth // 4, depth // 2, 3 * depth // 4) if 0 < i < depth})


def prune_tokens(
    state: TokenState,
    x: torch.Tensor,
    metric: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None,
    keep: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the top ceil(keep * n) patch tokens by class-token attention, fuse the rest into one.

    `metric` (ToMe's per-token keys) goes through the same selection so that merging can follow.
    """
    prefix = state.num_prefix_tokens
    n = x.shape[1] - prefix
    kept = math.ceil(keep * n)
    if kept >= n:
        return x, metric
    # Only the class token's row of the attention: (B, heads, 1, N), a small matmul. In float32 so that
    # bf16 rounding does not create ties in the ranking; with gradients, because EViT trains the fused
    # token's weights through it.
    logits = (q[:, :, :1].float() * scale) @ k.float().transpose(-2, -1)
    if bias is not None:
        logits = logits + bias[..., :1, :].float()
    cls_attn = logits.softmax(dim=-1).mean(dim=1)[:, 0, prefix:]  # (B, n)
    with torch.no_grad():
        order = cls_attn.argsort(dim=1, descending=True)
    keep_idx, fuse_idx = order[:, :kept, None], order[:, kept:, None]
    fuse_weight = cls_attn[..., None].gather(1, fuse_idx)

    def select(t: torch.Tensor, fuse: str) -> torch.Tensor:
        patches = t[:, prefix:]
        keep_part = patches.gather(1, keep_idx.expand(-1, -1, t.shape[-1]))
        rest = patches.gather(1, fuse_idx.expand(-1, -1, t.shape[-1]))
        if fuse == "weighted":
            fused = (rest * fuse_weight.to(rest.dtype)).sum(dim=1, keepdim=True)
        elif fuse == "sum":
            fused = rest.sum(dim=1, keepdim=True)
        else:
            fused = rest.amax(dim=1, keepdim=True)
        return torch.cat([t[:, :prefix], keep_part, fused], dim=1)

    if state.trace_source:
        state.source = select(state.sources(x), "max")
    # EViT's fused token is an attention-weighted sum, a new token rather than an average of the
    # ones it replaces: it counts as size 1 for proportional attention and later merges.
    sizes = select(state.sizes(x), "sum")
    sizes[:, -1] = 1.0
    state.size = sizes
    with torch.no_grad():
        metric = select(metric, "weighted")
    return select(x, "weighted"), metric
