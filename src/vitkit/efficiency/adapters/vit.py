"""Token reduction on `vitkit.models.VisionTransformer` (ViT, DeiT, DINOv2, CLIP, SigLIP).

As ToMe's timm patch does, a reducing block's class is swapped for `ReducingBlock`, a subclass of the
shared `Block` that runs attention with the block's own modules, hands the tokens to its
`token_reducer`, then runs the MLP on what is left (`swap.BlockSwapAdapter`: keys and weights unchanged,
the state reset inside block 0). Average pooling stays the plain mean of the remaining tokens, as in the
ToMe reference.
"""

import torch
from torch import nn

from ...layers.block import Block
from ...models import VisionTransformer
from ..reducer import BlockReducer
from . import register_token_adapter
from .swap import BlockSwapAdapter


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


class ViTAdapter(BlockSwapAdapter):
    block, reducing_block = Block, ReducingBlock

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
