"""CaiT, "Going deeper with Image Transformers" (Touvron et al. 2021): timm's `Cait`, with timm's parameter
names so timm weights load as they are.

- `blocks`: self-attention blocks over the patch tokens only (no class token), with talking-heads attention
  (`proj_l` mixes the heads' attention logits before the softmax, `proj_w` the probabilities after it) and
  per-channel residual scales `gamma_1` / `gamma_2` (LayerScale, as plain parameters: timm's names).
- `blocks_token_only`: class-attention blocks; only the class token is updated, attending to itself and
  all patch tokens.
- `norm` over [class token, patch tokens]; the head reads the class token ("token") or the patch mean ("avg").

Differences from timm: attention is always computed explicitly (talking heads cannot use a fused kernel;
class attention does too, where timm uses `scaled_dot_product_attention`, equal within float rounding), and
every attention module reports its probabilities to `on_attention`. timm's stochastic depth is the same
rate in every self-attention block (not linear in depth), and none in the class-attention blocks; so here.
"""

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from ...layers import ACT_LAYERS, ClassAttn, DropPath, Mlp, PatchEmbed, apply_linear, resample_abs_pos_embed
from .._features import (
    ClassAttentionHeadMixin,
    adapt_stem_channels,
    check_output_fmt,
    forward_blocks,
    layout_token_intermediates,
    run_block,
    run_blocks,
)
from .._groups import MERGE_WITH_PREVIOUS
from .._protocol import FeatureInfo, InputSpec, with_pretrained_cfg
from .configs import CaitConfig
from .convert import from_original


class TalkingHeadAttn(nn.Module):
    """Self-attention whose heads talk: linear maps across heads on the logits (`proj_l`) and on the
    probabilities (`proj_w`). `on_attention` receives the (B, heads, N, N) probabilities after `proj_w`,
    the ones that weight the values (they need not sum to one)."""

    attention_grad: bool = False  # always explicit: the probabilities are in the autograd graph anyway

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_l = nn.Linear(num_heads, num_heads)
        self.proj_w = nn.Linear(num_heads, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)
        self.on_attention: Callable[[torch.Tensor], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = apply_linear(x, self.qkv).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
        logits = self.proj_l(logits.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # mix heads: (B, N, N, heads)
        probs = self.proj_w(logits.softmax(dim=-1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.on_attention is not None:
            self.on_attention(probs)
        x = (self.attn_drop(probs) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(apply_linear(x, self.proj))


class LayerScaleBlock(nn.Module):
    """Pre-norm block over the patch tokens: talking-heads attention and MLP, each branch scaled per channel."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, init_values: float,
                 proj_drop: float, attn_drop: float, drop_path: float, norm_eps: float, act_layer):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = TalkingHeadAttn(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer, proj_drop)
        self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
        self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


class LayerScaleBlockClassAttn(nn.Module):
    """Class-attention block: the class token attends to [class token, patch tokens]; only it is updated."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, init_values: float,
                 norm_eps: float, act_layer):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = ClassAttn(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer)
        self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
        self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor, x_cls: torch.Tensor) -> torch.Tensor:
        x_cls = x_cls + self.gamma_1 * self.attn(self.norm1(torch.cat((x_cls, x), dim=1)))
        return x_cls + self.gamma_2 * self.mlp(self.norm2(x_cls))


class Cait(ClassAttentionHeadMixin, nn.Module):
    architecture = "cait"
    # why ToMe / EViT refuse it (vitkit.efficiency.adapters): read by the refusal, not by the model
    token_reduction_refusal = ("its talking-heads attention mixes the heads' logits before the softmax, where "
                               "proportional attention would have to act, and EViT's class token only enters in the "
                               "class-attention blocks")
    class_blocks_attr = "blocks_token_only"

    def __init__(self, config: CaitConfig):
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        self.global_pool = c.global_pool
        self.num_features = self.embed_dim = c.embed_dim
        self.grad_checkpointing = False
        act_layer = ACT_LAYERS[c.act_layer]

        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, c.embed_dim))  # patches only
        self.pos_drop = nn.Dropout(c.pos_drop_rate)
        self.blocks = nn.Sequential(*[
            LayerScaleBlock(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, c.init_values, c.proj_drop_rate,
                            c.attn_drop_rate, c.drop_path_rate, c.norm_eps, act_layer)
            for _ in range(c.depth)
        ])
        self.blocks_token_only = nn.ModuleList([
            LayerScaleBlockClassAttn(c.embed_dim, c.num_heads, c.mlp_ratio_token_only, c.qkv_bias, c.init_values,
                                     c.norm_eps, act_layer)
            for _ in range(c.depth_token_only)
        ])
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = self._linear_head(c.num_classes)
        self.feature_info = [FeatureInfo(c.embed_dim, c.patch_size, f"blocks.{i}") for i in range(c.depth)]
        self.init_weights()

    @property
    def input_spec(self) -> InputSpec:
        """Fixed size: the absolute position embedding covers one patch grid (`create_model(...,
        img_size=...)` with weights resamples it for another); timm's eval crop is 1.0, bicubic."""
        c = self.config
        spec = InputSpec(in_chans=c.in_chans, img_size=(c.img_size, c.img_size), fixed_size=True,
                         size_multiple=c.patch_size, crop_pct=1.0, interpolation="bicubic")
        return with_pretrained_cfg(spec, self)

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's init: truncated normal(0.02) for the position embedding, class token and linears."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ----- timm's model API ------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) to the patch tokens the first block sees (no class token)."""
        x = x.to(self.pos_embed.dtype)
        return self.pos_drop(self.patch_embed(x) + self.pos_embed)

    def _class_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the blocks -> normed [class token, patch tokens]."""
        # a copy, not an expand() view: under no_grad a view of a parameter still says requires_grad with no
        # grad_fn, and module hooks that track autograd (FlopCounterMode's, so `vitkit info`) fail on it
        cls = self.cls_token.repeat(x.shape[0], 1, 1)
        for block in self.blocks_token_only:
            cls = block(x, cls)
        return self.norm(torch.cat((cls, x), dim=1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + patches, D): the class token, then the patch tokens, after the final norm."""
        x = self.embed(x)
        x = forward_blocks(self, x)
        return self._class_attention(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, 1:].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
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
        """Outputs of chosen self-attention blocks (patch tokens; the class-attention blocks are not among
        them), as timm returns them. `indices`: an int n takes the last n blocks, a list takes those blocks
        (negatives count from the end), None takes all. `norm` applies the final norm to each.
        `output_fmt`: "NCHW" maps or "NLC" tokens. Returns (forward_features output, intermediates) unless
        `intermediates_only`."""
        check_output_fmt(output_fmt)
        grid = self.patch_embed.grid_size
        x = self.embed(x)
        x, intermediates = run_blocks(self.blocks, x, indices, partial(run_block, self), self.norm, norm,
                                     stop_early or intermediates_only)
        intermediates = layout_token_intermediates(intermediates, 0, (grid, grid), output_fmt)
        if intermediates_only:
            return intermediates
        return self._class_attention(x), intermediates

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's groups: the embedding; each block; class-attention block j with block
        depth - depth_token_only + j (overlapping the last blocks); the final norm with the last; the head."""
        offset = len(self.blocks) - len(self.blocks_token_only)
        token_only = [(rf"^blocks_token_only\.{j}\.", (offset + j, MERGE_WITH_PREVIOUS))
                      for j in range(len(self.blocks_token_only))]
        return {"stem": r"^cls_token|^pos_embed|^patch_embed",
                "blocks": [(r"^blocks\.(\d+)\.", None), *token_only, (r"^norm\.", (MERGE_WITH_PREVIOUS,))]}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each self-attention block's activations in the backward pass (training only)."""
        self.grad_checkpointing = enable

    # ----- checkpoint adaptation -------------------------------------------------------------
    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fit weights to this model: the original release's wrapping undone, the position embedding
        resampled to another image size, the patch projection refitted to another channel count."""
        state_dict = from_original(state_dict)
        pos = state_dict.get("pos_embed")
        if pos is not None and pos.shape != self.pos_embed.shape and pos.shape[-1] == self.embed_dim:
            state_dict["pos_embed"] = resample_abs_pos_embed(pos, self.patch_embed.grid_size, 0)
        adapt_stem_channels(state_dict, "patch_embed.proj.weight", self.patch_embed.proj.weight)
        return state_dict
