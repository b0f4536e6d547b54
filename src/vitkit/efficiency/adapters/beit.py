"""Token reduction on BEiT (`vitkit.models.beit.Beit`): a ViT with a relative position bias.

The bias is a table over (query, key) token positions, so merged and pruned tokens need one for the tokens
that remain. vitkit takes the mean over the original positions each token stands for: with S the row-normalised
source matrix (remaining token x original token, its `TokenState.source`), the bias becomes S B S^T, the mean of
B over every pair of originals behind a (query, key) pair, which is B itself before anything is merged. It is
exact when merged tokens share a position's bias (e.g. duplicates of one token) and the natural extension of
ToMe's averaging of the tokens themselves; ToMe and EViT papers cover models with absolute positions only.
Sources are traced for it (an N x N0 matrix per image, which a BEiT without relative bias does not need).
Otherwise as ViT: reduction between attention and MLP, proportional attention, the class token kept, EViT's
fused token carrying the union of the pruned tokens' positions.
"""

import torch
from torch import nn

from ...models.beit.model import Beit, BeitBlock
from ..reducer import BlockReducer
from ..token_state import TokenState
from . import register_token_adapter
from .swap import BlockSwapAdapter


def reduce_position_bias(bias: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """A (1 or B, heads, N0, N0) bias over the original tokens -> (B, heads, N, N) over the remaining ones: the
    mean of the bias over the originals behind each (query, key) pair. `source` (B, N, N0): which originals each
    remaining token holds (None: nothing reduced yet)."""
    if source is None:
        return bias
    weights = source.float() / source.float().sum(dim=-1, keepdim=True)  # (B, N, N0), rows sum to 1
    weights = weights[:, None]
    return (weights @ bias.float() @ weights.transpose(-2, -1)).to(bias.dtype)


class ReducingBeitBlock(BeitBlock):
    """A BEiT block with token merging/pruning between attention and MLP, its position bias reduced alike."""

    token_reducer: BlockReducer

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        reducer = self.token_reducer
        bias = reducer.start(x, None)  # resets the state in block 0; proportional attention's log(size)
        source = reducer.state.source  # the bias is over the tokens the first block saw
        position = self.attn.relative_bias(shared_rel_pos_bias, x.shape[1] if source is None else source.shape[-1])
        if position is not None:
            position = reduce_position_bias(position, source)
            bias = position if bias is None else position + bias
        q, k, v = self.attn.project_qkv(self.norm1(x))
        y = self.attn.attend(q, k, v, bias)
        x = self._residual(x, y, self.gamma_1, self.drop_path1)
        x = reducer.reduce(x, q, k, self.attn.scale, bias)
        y = self.mlp(self.norm2(x))
        return self._residual(x, y, self.gamma_2, self.drop_path2)


class BeitAdapter(BlockSwapAdapter):
    block, reducing_block = BeitBlock, ReducingBeitBlock

    def installed(self, model: nn.Module, state: TokenState) -> None:
        if model.rel_pos_bias is not None or any(b.attn.relative_position_bias_table is not None for b in model.blocks):
            state.trace_source = True  # the position bias follows the tokens' sources
            for index in range(len(model.blocks)):  # every block after a reduction needs its bias reduced too
                self._swap(model, index)

    def num_tokens(self, model: nn.Module) -> int:
        return model.patch_embed.num_patches + model.num_prefix_tokens

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return model.num_prefix_tokens

    def has_class_token(self, model: nn.Module) -> bool:
        return True

    def patch_grid(self, model: nn.Module) -> tuple[int, int]:
        grid = model.patch_embed.grid_size
        return (grid, grid) if isinstance(grid, int) else tuple(grid)


register_token_adapter(Beit, BeitAdapter())
