"""Token reduction on a model: which blocks prune (EViT) and merge (ToMe), and how much.

A reducing block holds a `BlockReducer`: after the block's attention it runs the reductions set for
that block (EViT pruning first, then ToMe merging) on the token tensors, knowing nothing of the model.
How a reducer gets between a block's attention and its MLP is the model family's business: each
family has an adapter (`efficiency/adapters/`), and models without one are refused with the reason.
Reducers are small objects rather than closures so that `copy.deepcopy(model)` copies the token state
with the model instead of sharing it. `apply_tome` and `apply_evit` change the model in place;
`vitkit.optimize` works on a copy. One model instance runs one forward at a time (as with any stateful
module; not nn.DataParallel).
"""

import warnings

import torch
from torch import nn

from .adapters import find_token_adapter, token_adapter
from .evit import default_prune_blocks, prune_tokens
from .finite_rows import unwrap
from .token_state import TokenState
from .tome import clamp_schedule, merge_schedule, merge_tokens


class BlockReducer:
    def __init__(self, state: TokenState, first: bool = False):
        self.state = state
        self.first = first  # the first block: a new token sequence starts here, so the state resets
        self.keep: float | None = None  # EViT keep rate at this block
        self.r = 0  # ToMe tokens merged at this block

    def start(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor | None:
        """Before the block's attention: reset the state at the first block; the attention bias to use
        (proportional attention)."""
        if self.first:
            self.state.reset()
        return self.state.attention_bias(x, attn_bias)

    def reduce(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """After the attention's residual add: `x` (B, N, C), the attention's `q`, `k` (B, heads, N, D)
        and the bias it used. Returns the tokens the MLP half sees."""
        metric = k.mean(dim=1)  # ToMe's similarity: keys averaged over heads
        if self.keep is not None:
            x, metric = prune_tokens(self.state, x, metric, q, k, scale, bias, self.keep)
        if self.r > 0:
            x = merge_tokens(self.state, x, metric, self.r)
        return x


def reduces_tokens(model: nn.Module) -> bool:
    """Whether token merging or pruning is installed on `model`."""
    model = unwrap(model)
    adapter = find_token_adapter(model)
    return adapter is not None and adapter.state(model) is not None


def apply_tome(
    model: nn.Module,
    r: int | list[int],
    schedule: str = "constant",
    prop_attn: bool = True,
    trace_source: bool = False,
) -> nn.Module:
    """Install token merging on `model`'s blocks, in place (`vitkit.optimize` works on a copy)."""
    net = unwrap(model)
    adapter = token_adapter(net, "ToMe")
    reducers = adapter.reducers(net)
    wanted = merge_schedule(len(reducers), r, schedule)
    num_tokens = adapter.num_tokens(net)
    if any(red is not None and red.r for red in reducers):
        raise ValueError("this model already merges tokens; apply ToMe to the original model")
    keep = [red.keep if red is not None else None for red in reducers]
    possible = clamp_schedule(wanted, num_tokens, adapter.num_prefix_tokens(net), keep)
    if possible != wanted:
        warnings.warn(
            f"ToMe r={wanted} asks to merge more tokens than {num_tokens} allow (at most half the mergeable "
            f"tokens per block); clamped to r={possible}",
            stacklevel=2,
        )
    state = adapter.install(net)
    state.prop_attn = prop_attn
    state.trace_source = state.trace_source or trace_source
    for index, block_r in enumerate(possible):
        adapter.reducer(net, index).r = block_r
    return model


def apply_evit(model: nn.Module, keep: float, blocks: list[int] | None = None) -> nn.Module:
    """Install EViT token pruning on `model`, in place (`vitkit.optimize` works on a copy)."""
    if not 0 < keep <= 1:
        raise ValueError(f"evit keep must be in (0, 1], got {keep}")
    net = unwrap(model)
    adapter = token_adapter(net, "EViT")
    if not adapter.has_class_token(net):
        raise ValueError(f"EViT ranks tokens by class-token attention, and this {type(net).__name__} has no class "
                         "token; ToMe (tome:r=N) merges tokens without one")
    depth = len(adapter.reducers(net))
    blocks = default_prune_blocks(depth) if blocks is None else [b + depth if b < 0 else b for b in blocks]
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise ValueError(f"evit blocks {bad} are out of range for a model with {depth} blocks (0..{depth - 1})")
    adapter.install(net)
    for b in blocks:
        adapter.reducer(net, b).keep = keep
    return model
