"""Token reduction on a model: which blocks prune (EViT) and merge (ToMe), and how much.

A block's `token_reducer` holds a `BlockReducer`: it runs the block's attention once, then the
reductions set for that block (EViT pruning first, then ToMe merging). It is a small object rather
than a closure so that `copy.deepcopy(model)` copies the token state with the model instead of
sharing it. `apply_tome` and `apply_evit` change the model in place; `vitkit.optimize` works on a copy.
One model instance runs one forward at a time (as with any stateful module; not nn.DataParallel).
"""

import warnings

import torch
from torch import nn

from .evit import default_prune_blocks, prune_tokens
from .token_state import TokenState
from .tome import clamp_schedule, merge_schedule, merge_tokens


class BlockReducer:
    def __init__(self, state: TokenState):
        self.state = state
        self.keep: float | None = None  # EViT keep rate at this block
        self.r = 0  # ToMe tokens merged at this block

    def __call__(self, block: nn.Module, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        attn = block.attn
        q, k, v = attn.project_qkv(block.norm1(x))
        bias = self.state.attention_bias(x, attn_bias)
        x = x + block.drop_path1(block.ls1(attn.attend(q, k, v, bias)))
        metric = k.mean(dim=1)  # ToMe's similarity: keys averaged over heads
        if self.keep is not None:
            x, metric = prune_tokens(self.state, x, metric, q, k, attn.scale, bias, self.keep)
        if self.r > 0:
            x = merge_tokens(self.state, x, metric, self.r)
        return x


def block_reducer(model: nn.Module, index: int) -> BlockReducer:
    block = model.blocks[index]
    if block.token_reducer is None:
        block.token_reducer = BlockReducer(token_state(model))
    return block.token_reducer


def token_state(model: nn.Module) -> TokenState:
    """The model's token state, created on first use."""
    state = getattr(model, "token_state", None)
    if state is None:
        if not is_plain_vit(model):
            raise TypeError(
                f"token reduction needs a plain ViT (patch embedding + token sequence); {type(model).__name__} "
                "is not one"
            )
        state = model.token_state = TokenState(model.num_prefix_tokens)  # the model's embed() resets it
    return state


def is_plain_vit(model: nn.Module) -> bool:
    """One token sequence through every block: what token merging and pruning need."""
    return all(hasattr(model, name) for name in ("blocks", "num_prefix_tokens", "patch_embed"))


def reduces_tokens(model: nn.Module) -> bool:
    return getattr(model, "token_state", None) is not None


def apply_tome(
    model: nn.Module,
    r: int | list[int],
    schedule: str = "constant",
    prop_attn: bool = True,
    trace_source: bool = False,
) -> nn.Module:
    """Install token merging on `model`'s blocks, in place (`vitkit.optimize` works on a copy)."""
    blocks = list(model.blocks)
    wanted = merge_schedule(len(blocks), r, schedule)
    state = token_state(model)
    num_tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    if any(b.token_reducer is not None and b.token_reducer.r for b in blocks):
        raise ValueError("this model already merges tokens; apply ToMe to the original model")
    keep = [b.token_reducer.keep if b.token_reducer is not None else None for b in blocks]
    possible = clamp_schedule(wanted, num_tokens, state.num_prefix_tokens, keep)
    if possible != wanted:
        warnings.warn(
            f"ToMe r={wanted} asks to merge more tokens than {num_tokens} allow (at most half the mergeable "
            f"tokens per block); clamped to r={possible}",
            stacklevel=2,
        )
    state.prop_attn = prop_attn
    state.trace_source = state.trace_source or trace_source
    for index, block_r in enumerate(possible):
        block_reducer(model, index).r = block_r
    return model


def apply_evit(model: nn.Module, keep: float, blocks: list[int] | None = None) -> nn.Module:
    """Install EViT token pruning on `model`, in place (`vitkit.optimize` works on a copy)."""
    if not 0 < keep <= 1:
        raise ValueError(f"evit keep must be in (0, 1], got {keep}")
    if getattr(model, "cls_token", None) is None:
        raise ValueError("EViT ranks tokens by class-token attention, and this model has no class token")
    depth = len(model.blocks)
    blocks = default_prune_blocks(depth) if blocks is None else [b + depth if b < 0 else b for b in blocks]
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise ValueError(f"evit blocks {bad} are out of range for a model with {depth} blocks (0..{depth - 1})")
    for b in blocks:
        block_reducer(model, b).keep = keep
    return model
