"""Token reduction on `vitkit.models.VisionTransformer` (ViT, DeiT, DINOv2, CLIP, SigLIP).

As ToMe's timm patch does, a reducing block's class is swapped for `ReducingBlock`, a subclass of the
shared `Block` that runs attention with the block's own modules, hands the tokens to its
`token_reducer`, then runs the MLP on what is left. No module or parameter is added, so `state_dict()`
keys, weights and checkpoints stay those of the plain model.

The token state lives on the model as `model.token_state`. Every pass through the blocks starts it
afresh: block 0 always gets a reducer (merging nothing unless asked) that resets the state before its
attention. That reset is a plain call inside the block rather than a forward hook, so `forward`,
`forward_features` and `forward_intermediates` all reset it, and torch.compile and ONNX export trace it.
"""

import torch
from torch import nn

from ...layers.block import Block
from ...models import VisionTransformer
from ..reducer import BlockReducer
from ..token_state import TokenState
from . import TokenAdapter, register_token_adapter


class ReducingBlock(Block):
    """A ViT block with token merging/pruning between attention and MLP (see `BlockReducer`)."""

    token_reducer: BlockReducer

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        reducer = self.token_reducer
        bias = reducer.start(x, attn_bias)
        q, k, v = self.attn.project_qkv(self.norm1(x))
        x = x + self.drop_path1(self.ls1(self.attn.attend(q, k, v, bias)))
        x = reducer.reduce(x, q, k, self.attn.scale, bias)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class ViTAdapter(TokenAdapter):
    def state(self, model: nn.Module) -> TokenState | None:
        return getattr(model, "token_state", None)

    def install(self, model: nn.Module) -> TokenState:
        state = self.state(model)
        if state is None:
            state = model.token_state = TokenState(model.num_prefix_tokens)
            self._swap(model, 0).first = True
        return state

    def reducers(self, model: nn.Module) -> list[BlockReducer | None]:
        return [block.token_reducer if isinstance(block, ReducingBlock) else None for block in model.blocks]

    def reducer(self, model: nn.Module, index: int) -> BlockReducer:
        self.install(model)
        return self._swap(model, index)

    def _swap(self, model: nn.Module, index: int) -> BlockReducer:
        block = model.blocks[index]
        if isinstance(block, ReducingBlock):
            return block.token_reducer
        if type(block) is not Block:
            raise TypeError(f"token reduction knows vitkit's ViT Block, not {type(block).__name__} (block {index})")
        block.__class__ = ReducingBlock  # same modules and parameters: state_dict keys unchanged
        block.token_reducer = BlockReducer(model.token_state)
        return block.token_reducer

    def num_tokens(self, model: nn.Module) -> int:
        return model.patch_embed.num_patches + model.num_prefix_tokens

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return model.num_prefix_tokens

    def has_class_token(self, model: nn.Module) -> bool:
        return getattr(model, "cls_token", None) is not None

    def patch_grid(self, model: nn.Module) -> tuple[int, int]:
        grid = model.patch_embed.grid_size
        return (grid, grid) if isinstance(grid, int) else tuple(grid)


register_token_adapter(VisionTransformer, ViTAdapter())
