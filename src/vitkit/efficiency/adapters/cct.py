"""Token reduction on CCT (`vitkit.models.cct.Cct`): a token sequence without a class token.

ToMe merges between each block's attention and its MLP half, after CCT's normalisation of the residual
stream (the block is x = norm2(x + attn(norm1(x))); x + mlp(x), so the normalised stream is what the MLP
and the next block see). Sequence pooling is an attention over the tokens, so proportional attention
applies there too: a token standing for s originals gets log(s) added to its pooling score, and merging
exact duplicates changes nothing (tested). EViT ranks tokens by class-token attention and is refused: CCT
has no class token. Mean pooling stays the plain mean of the remaining tokens, as for ViT. A head reset with
`reset_classifier(global_pool="seq")` after installing makes a plain pooling layer again: change the head first.
"""

import torch
from torch import nn

from ...models.cct.model import Cct, CctBlock
from ..reducer import BlockReducer
from ..token_state import TokenState
from . import register_token_adapter
from .swap import BlockSwapAdapter


class ReducingCctBlock(CctBlock):
    """A CCT block with token merging between attention and MLP (see `BlockReducer`)."""

    token_reducer: BlockReducer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reducer = self.token_reducer
        bias = reducer.start(x, None)
        q, k, v = self.attn.project_qkv(self.norm1(x))
        x = self.norm2(x + self.drop_path(self.attn.attend(q, k, v, bias)))
        x = reducer.reduce(x, q, k, self.attn.scale, bias)
        return x + self.drop_path(self.mlp(x))


class ProportionalPoolScore(nn.Linear):
    """CCT's sequence-pooling score layer (Linear(D, 1)) plus log(size) per token under proportional attention."""

    token_state: TokenState

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = super().forward(x)
        state, size = self.token_state, self.token_state.size
        if state.prop_attn and size is not None and size.shape[1] == x.shape[1]:
            score = score + size.log().to(score.dtype)
        return score


class CctAdapter(BlockSwapAdapter):
    block, reducing_block = CctBlock, ReducingCctBlock

    def installed(self, model: nn.Module, state: TokenState) -> None:
        pool = model.attention_pool
        if type(pool) is nn.Linear:  # same parameters, so the state_dict keys stay
            pool.__class__ = ProportionalPoolScore
            pool.token_state = state

    def num_tokens(self, model: nn.Module) -> int:
        return model.grid_size**2

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return 0

    def has_class_token(self, model: nn.Module) -> bool:
        return False

    def patch_grid(self, model: nn.Module) -> tuple[int, int]:
        return (model.grid_size, model.grid_size)


register_token_adapter(Cct, CctAdapter())
