"""Token merging (ToMe; Bolya et al., ICLR 2023), on the fused attention kernel.

In each block, between attention and MLP, the tokens are split alternately into sets A and B; each A
token finds its most similar B token (cosine similarity of the attention keys averaged over heads),
and the r most similar pairs are merged by size-weighted average. Prefix tokens are never merged.
Proportional attention adds log(size) to the logits, passed to `scaled_dot_product_attention` as an
additive mask, so the fused kernel stays in use. Matches the reference implementation's choices
and token order (tested against its outputs).
"""

import math
from collections.abc import Callable

import torch

from .token_state import TokenState

Merge = Callable[[torch.Tensor, str], torch.Tensor]


def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int = 0) -> Merge:
    """A function that merges r tokens of any (B, N, C) tensor laid out like `metric` (B, N, C').

    The first `protected` tokens are neither merged away nor merged into. The result is laid out as
    [protected tokens][unmerged A tokens, in order][B tokens]: the reference's order for models with a
    class token (without one, the reference leaves unmerged tokens in score order; order does not change
    the output of a pooled model).
    """
    n = metric.shape[1]
    r = min(r, (n - protected) // 2)
    if r <= 0:
        return lambda x, mode="mean": x
    protected_a, protected_b = (protected + 1) // 2, protected // 2
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]
        scores = a @ b.transpose(-1, -2)
        scores[:, :protected_a, :] = -math.inf
        scores[:, :, :protected_b] = -math.inf
        best_score, best_b = scores.max(dim=-1)
        order = best_score.argsort(dim=-1, descending=True)[..., None]
        unmerged = order[:, r:].sort(dim=1).values  # keeps original order; protected A tokens first
        merged = order[:, :r]
        into = best_b[..., None].gather(dim=1, index=merged)

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        a, b = x[:, ::2], x[:, 1::2]
        B, na, C = a.shape
        kept = a.gather(dim=1, index=unmerged.expand(B, na - r, C))
        src = a.gather(dim=1, index=merged.expand(B, r, C))
        b = b.scatter_reduce(1, into.expand(B, r, C), src, reduce=mode)
        # Prefix tokens back in their original order (class, distillation, registers).
        return torch.cat([x[:, :protected], kept[:, protected_a:], b[:, protected_b:]], dim=1)

    return merge


def merge_wavg(merge: Merge, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge by size-weighted average; returns the merged tokens and their sizes."""
    x = merge(x * size.to(x.dtype), "sum")
    size = merge(size, "sum")
    return x / size.to(x.dtype), size


def merge_source(merge: Merge, source: torch.Tensor) -> torch.Tensor:
    return merge(source, "amax")


def merge_schedule(depth: int, r: int | list[int], schedule: str = "constant") -> list[int]:
    """Tokens to merge in each block: a constant r, an explicit per-block list (padded with zeros), or
    ToMe's decreasing schedule (1.5r down to 0.5r; about the total of constant r, less the rounding)."""
    if isinstance(r, list | tuple):
        if len(r) > depth:
            raise ValueError(f"r lists {len(r)} values but the model has {depth} blocks")
        if any(int(v) < 0 for v in r):
            raise ValueError(f"r values must be >= 0, got {list(r)}")
        return [int(v) for v in r] + [0] * (depth - len(r))
    r = int(r)
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    if schedule == "constant":
        return [r] * depth
    if schedule == "decreasing":
        start, end = int(1.5 * r), r - (int(1.5 * r) - r)
        step = (end - start) / max(depth - 1, 1)
        return [int(start + step * i) for i in range(depth)]
    raise ValueError(f"schedule must be 'constant' or 'decreasing', got {schedule!r}")


def clamp_schedule(schedule: list[int], num_tokens: int, protected: int, keep: list[float | None] = ()) -> list[int]:
    """The r each block can actually merge: at most half the unprotected tokens it sees. `keep`: the
    EViT keep rate of each block (None where it does not prune), which runs before merging."""
    clamped = []
    for i, r in enumerate(schedule):
        rate = keep[i] if i < len(keep) else None
        patches = num_tokens - protected
        if rate is not None and math.ceil(rate * patches) < patches:
            num_tokens = protected + math.ceil(rate * patches) + 1
        r = min(r, (num_tokens - protected) // 2)
        clamped.append(r)
        num_tokens -= r
    return clamped


def merge_tokens(state: TokenState, x: torch.Tensor, metric: torch.Tensor, r: int) -> torch.Tensor:
    """One block's merge of r tokens, keeping the state's sizes (and sources) in step."""
    merge = bipartite_soft_matching(metric, r, state.num_prefix_tokens)
    if state.trace_source:
        state.source = merge_source(merge, state.sources(x))
    x, state.size = merge_wavg(merge, x, state.sizes(x))
    return x
