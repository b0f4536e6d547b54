"""CCT, Compact Convolutional Transformer ("Escaping the Big Data Paradigm with Compact Transformers",
Hassani et al. 2021), after the official code (github.com/SHI-Labs/Compact-Transformers, src/cct.py,
src/utils/tokenizer.py, src/utils/transformers.py).

- `tokenizer`: a few [conv (no bias), ReLU, max-pool 3x3 stride 2] layers; the output map, flattened, is
  the token sequence (no class token: `num_prefix_tokens` is 0).
- `pos_embed`: learnable (a parameter over the tokenizer's grid), sinusoidal (a buffer, 1-D over the token
  index, as the official `sinusoidal_embedding`) or none.
- `blocks`: the official `TransformerEncoderLayer`, which is not the usual pre-norm block: the attention
  branch reads `norm1(x)`, and the residual stream itself is then normalised (`norm2`) before the MLP
  branch is added: x = x + attn(norm1(x)); x = norm2(x); x = x + mlp(x).
- `norm`, then sequence pooling (`attention_pool`: Linear(D, 1), softmax over the tokens, the weighted
  sum of the tokens) and the linear `head`.

Differences from the official code: timm-style names (`convert.py` maps the official checkpoint keys);
attention is vitkit's `Attention` (torch's fused kernel, equal within float rounding, with `on_attention`);
the learnable position embedding is resampled (bicubic, on the 2-D token grid) for any other input size at
every forward, where the official code resamples it (bilinear) only when a checkpoint is loaded; the
sinusoidal one is a non-persistent buffer recomputed for any token count (officially a frozen parameter in
the state dict, counted among the parameters). Dropout and stochastic depth default to 0 (official: 0.1
attention dropout, 0.1 stochastic depth). The official `_cct` helper swallows its `positional_embedding`
argument, so its `*_sine` constructors build learnable embeddings; here `*_sine` is sinusoidal, as named.
"""

import math
from functools import partial

import torch
from torch import nn

from ...layers import ACT_LAYERS, Attention, DropPath, Mlp, resample_abs_pos_embed
from ...layers.patch_embed import check_image_input
from .._features import (
    adapt_stem_channels,
    check_output_fmt,
    forward_blocks,
    init_linear_,
    layout_token_intermediates,
    run_block,
    run_blocks,
    take_indices,
)
from .._groups import MERGE_WITH_PREVIOUS
from .._protocol import FeatureInfo, InputSpec, with_pretrained_cfg
from .configs import CctConfig
from .convert import from_original


class Tokenizer(nn.Module):
    """Convolutional tokenizer: `n_conv_layers` of [conv, ReLU, max-pool], flattened to (B, h*w, D).
    `conv_layers.{i}` is an nn.Sequential(conv, ReLU, max-pool), the official layout."""

    def __init__(self, c: CctConfig):
        super().__init__()
        self.in_chans = c.in_chans
        widths = [c.in_chans] + [c.conv_width] * (c.n_conv_layers - 1) + [c.embed_dim]
        self.conv_layers = nn.Sequential(*[
            nn.Sequential(
                nn.Conv2d(widths[i], widths[i + 1], c.kernel_size, stride=c.stride, padding=c.padding, bias=False),
                nn.ReLU(),
                nn.MaxPool2d(c.pooling_kernel_size, stride=c.pooling_stride, padding=c.pooling_padding),
            )
            for i in range(c.n_conv_layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, D, h, w) token map."""
        check_image_input(x, self.in_chans, None)
        return self.conv_layers(x)


class CctBlock(nn.Module):
    """The official `TransformerEncoderLayer` (module docstring): pre-norm attention, then the residual
    stream normalised, then the MLP branch."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, proj_drop: float,
                 attn_drop: float, drop_path: float, norm_eps: float, act_layer):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer, proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm2(x + self.drop_path(self.attn(self.norm1(x))))
        return x + self.drop_path(self.mlp(x))


def sinusoidal_embedding(length: int, dim: int) -> torch.Tensor:
    """(1, length, dim): the official 1-D table, sin on even and cos on odd channels of
    position / 10000^(2 * (i // 2) / dim) (angles in float64, rounded to float32 before sin / cos, as there)."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    channel = torch.arange(dim, dtype=torch.float64)
    angles = (position / 10000 ** (2 * torch.div(channel, 2, rounding_mode="floor") / dim)).float()
    table = torch.where(channel.long() % 2 == 0, angles.sin(), angles.cos())
    return table[None]


class Cct(nn.Module):
    architecture = "cct"
    num_prefix_tokens = 0  # no class token: the head pools the sequence

    def __init__(self, config: CctConfig):
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        self.global_pool = c.global_pool
        self.num_features = self.embed_dim = c.embed_dim
        self.grad_checkpointing = False
        self.grid_size = c.token_grid(c.img_size)
        act_layer = ACT_LAYERS[c.act_layer]

        self.tokenizer = Tokenizer(c)
        num_tokens = self.grid_size**2
        if c.pos_embed_type == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, c.embed_dim))
        elif c.pos_embed_type == "sine":
            self.register_buffer("pos_embed", sinusoidal_embedding(num_tokens, c.embed_dim), persistent=False)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(c.drop_rate)
        rates = [c.drop_path_rate * i / max(1, c.depth - 1) for i in range(c.depth)]  # linear in depth
        self.blocks = nn.Sequential(*[
            CctBlock(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, c.drop_rate, c.attn_drop_rate, rate,
                     c.norm_eps, act_layer)
            for rate in rates
        ])
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.attention_pool = self._attention_pool(c.global_pool)
        self.head = self._linear_head(c.num_classes)
        self.feature_info = [FeatureInfo(c.embed_dim, c.reduction, f"blocks.{i}") for i in range(c.depth)]
        self.init_weights()

    @property
    def input_spec(self) -> InputSpec:
        """Any size: the position embedding follows the input's token grid (resampled or recomputed)."""
        c = self.config
        spec = InputSpec(in_chans=c.in_chans, img_size=(c.img_size, c.img_size), fixed_size=False,
                         size_multiple=c.reduction, crop_pct=1.0, interpolation="bicubic")
        return with_pretrained_cfg(spec, self)

    def _attention_pool(self, global_pool: str) -> nn.Module | None:
        return nn.Linear(self.embed_dim, 1) if global_pool == "seq" else None

    def _linear_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official init: Kaiming normal convolutions, truncated normal(0.02) linears with zero bias,
        truncated normal(0.2) learnable position embedding."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.2)

    # ----- embedding -------------------------------------------------------------------------
    def patch_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The token grid (h, w) of images `x` (B, C, H, W)."""
        return self.config.token_grid(x.shape[-2]), self.config.token_grid(x.shape[-1])

    def _pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor | None:
        if self.pos_embed is None or grid == (self.grid_size, self.grid_size):
            return self.pos_embed
        if self.config.pos_embed_type == "sine":
            return sinusoidal_embedding(grid[0] * grid[1], self.embed_dim).to(self.pos_embed)
        return resample_abs_pos_embed(self.pos_embed, grid, 0)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) to the token sequence (B, h*w, D) the first block sees."""
        x = x.to(self.tokenizer.conv_layers[0][0].weight.dtype)
        x = self.tokenizer(x)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        pos_embed = self._pos_embed_for(grid)
        if pos_embed is not None:
            x = x + pos_embed
        return self.pos_drop(x)

    # ----- timm's model API ------------------------------------------------------------------
    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """A token sequence (from `embed`, possibly with tokens left out: masked pretraining, token
        reduction) through the blocks and the final norm."""
        x = forward_blocks(self, x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h*w, D): the tokens after the final norm."""
        return self.forward_tokens(self.embed(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D): sequence pooling (softmax over the tokens of a Linear(D, 1) score, the
        weighted sum of the tokens) or the token mean."""
        if self.attention_pool is None:
            return x.mean(dim=1)
        weights = self.attention_pool(x).softmax(dim=1)  # (B, N, 1)
        return (weights.transpose(1, 2) @ x).squeeze(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        stop_early: bool = False,
    ):
        """Outputs of chosen blocks, as timm returns them. `indices`: an int n takes the last n blocks, a
        list takes those blocks (negatives count from the end), None takes all. `norm` applies the final
        norm to each. `output_fmt`: "NCHW" maps of the token grid or "NLC" tokens. Returns
        (forward_features output, intermediates) unless `intermediates_only`."""
        check_output_fmt(output_fmt)
        grid_h, grid_w = self.patch_grid(x)
        x = self.embed(x)
        x, intermediates = run_blocks(self.blocks, x, indices, partial(run_block, self), self.norm, norm,
                                     stop_early or intermediates_only)
        intermediates = layout_token_intermediates(intermediates, 0, (grid_h, grid_w), output_fmt)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last one `indices` needs (and the final norm / the head's linear layer)."""
        take, last = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return sorted(take)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for `num_classes` (0: none, the pooled features come out), optionally with another
        pooling ("seq" gets a fresh `attention_pool`); the config follows."""
        if global_pool is not None:
            CctConfig.check_pool(global_pool)
            if global_pool != self.global_pool:
                self.attention_pool = self._attention_pool(global_pool)
                init_linear_(self.attention_pool)
            self.global_pool = self.config.global_pool = global_pool
        self.num_classes = self.config.num_classes = num_classes
        self.head = self._linear_head(num_classes)
        init_linear_(self.head)

    def get_classifier(self) -> nn.Module:
        return self.head

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"} if isinstance(self.pos_embed, nn.Parameter) else set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's ViT groups: the tokenizer and position embedding; each block; the final norm with the last
        block; then (unmatched) the sequence pooling and the head."""
        return {"stem": r"^pos_embed|^tokenizer", "blocks": [(r"^blocks\.(\d+)\.", None),
                                                             (r"^norm\.", (MERGE_WITH_PREVIOUS,))]}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (training only)."""
        self.grad_checkpointing = enable

    # ----- checkpoint adaptation -------------------------------------------------------------
    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fit weights to this model: official keys renamed, a learnable position embedding resampled to
        this model's token grid (a sinusoidal one dropped: it is recomputed), the first convolution refitted
        to another channel count."""
        state_dict = from_original(state_dict)
        pos = state_dict.get("pos_embed")
        if pos is not None:
            if not isinstance(self.pos_embed, nn.Parameter):
                state_dict.pop("pos_embed")
            elif pos.shape != self.pos_embed.shape and pos.shape[-1] == self.embed_dim:
                side = math.isqrt(pos.shape[1])
                if side * side == pos.shape[1]:
                    state_dict["pos_embed"] = resample_abs_pos_embed(pos, self.grid_size, 0)
        adapt_stem_channels(state_dict, "tokenizer.conv_layers.0.0.weight", self.tokenizer.conv_layers[0][0].weight)
        return state_dict
