"""XCiT, "XCiT: Cross-Covariance Image Transformers" (El-Nouby et al. 2021): timm's `Xcit`
(timm/models/xcit.py), with timm's parameter names so timm weights load as they are.

- `patch_embed`: a convolutional stem, stride-2 3x3 convolutions each with BatchNorm, GELU between them
  (3 for patch 8, 4 for patch 16), widening to `embed_dim`.
- `pos_embed`: a Fourier positional encoding of the patch grid (sines and cosines of the normalised row and
  column, projected by a 1x1 convolution), computed for any grid: XCiT takes any image size.
- `blocks`: XCA blocks over the patch tokens only: cross-covariance attention (attention between the
  channels of each head, from L2-normalised queries and keys along the tokens, with a learnable temperature
  per head: cost linear in the number of tokens), local patch interaction (LPI: depthwise 3x3 convolution,
  GELU, BatchNorm, depthwise 3x3 convolution on the token grid), and an MLP; each branch is scaled per
  channel (LayerScale `gamma1`, `gamma3`, `gamma2`, run in that order as the original code).
- `cls_attn_blocks`: class-attention blocks (CaiT's): the class token attends to [class token, patch
  tokens]; the patch tokens also take their LayerScaled norm1 output, after the attention either all
  tokens (`tokens_norm=True`) or only the class token are normalised by norm2, and the final residual
  doubles the patch tokens, exactly as timm and the original code (the features' patch tokens show it).
- `norm` over [class token, patch tokens]; the head reads the class token ("token") or the patch mean ("avg").

Differences from timm: the class attention is computed explicitly (timm uses `scaled_dot_product_attention`;
equal within float rounding); every attention module reports its probabilities to `on_attention`: XCA
gives (B, heads, head_dim, head_dim) channel-to-channel maps (not token maps: attention rollout does not
apply), class attention (B, heads, 1, N). timm's stochastic depth is the same rate in every XCA block and
none in the class-attention blocks; so here. Gradient checkpointing recomputes BatchNorm in training mode,
so its running statistics are updated twice per step (as in timm).
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import ACT_LAYERS, ClassAttn, DropPath, Mlp, apply_linear
from .._features import (
    ClassAttentionHeadMixin,
    adapt_stem_channels,
    check_output_fmt,
    layout_token_intermediates,
    run_block,
    run_blocks,
)
from .._groups import MERGE_WITH_PREVIOUS
from .._protocol import FeatureInfo, InputSpec, with_pretrained_cfg
from .configs import XcitConfig
from .convert import from_original


class PositionalEncodingFourier(nn.Module):
    """Sine/cosine features of the (1-based, normalised to (0, 2 pi]) row and column of each patch, `hidden_dim`
    per axis, projected to `dim` by a 1x1 convolution (timm's and the original code's `token_projection`)."""

    def __init__(self, hidden_dim: int = 32, dim: int = 768, temperature: float = 10000.0):
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=1)
        self.scale = 2 * math.pi
        self.temperature = temperature
        self.hidden_dim = hidden_dim
        self.eps = 1e-6

    def forward(self, height: int, width: int) -> torch.Tensor:
        """The encoding of a height x width grid as tokens (1, height * width, dim), row-major."""
        device, dtype = self.token_projection.weight.device, self.token_projection.weight.dtype
        rows = torch.arange(1, height + 1, device=device, dtype=torch.float32)
        cols = torch.arange(1, width + 1, device=device, dtype=torch.float32)
        rows = (rows / (rows[-1] + self.eps) * self.scale)[:, None].expand(height, width)
        cols = (cols / (cols[-1] + self.eps) * self.scale)[None, :].expand(height, width)
        steps = torch.arange(self.hidden_dim, device=device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * torch.div(steps, 2, rounding_mode="floor") / self.hidden_dim)

        def encode(pos: torch.Tensor) -> torch.Tensor:  # (H, W) -> (H, W, hidden_dim): sin, cos interleaved
            pos = pos[..., None] / dim_t
            return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(2)

        pos = torch.cat((encode(rows), encode(cols)), dim=-1).permute(2, 0, 1)[None]  # (1, 2 * hidden, H, W)
        return self.token_projection(pos.to(dtype)).flatten(2).transpose(1, 2)


def conv3x3_bn(in_chans: int, out_chans: int, stride: int) -> nn.Sequential:
    """3x3 convolution (no bias) + BatchNorm (timm's `conv3x3`)."""
    return nn.Sequential(nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_chans))


class ConvPatchEmbed(nn.Module):
    """Stride-2 conv + BN stages with the activation between them, widening embed_dim / 8 (patch 16) or
    embed_dim / 4 (patch 8) -> embed_dim. `proj` is timm's Sequential (conv blocks at even indices)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, act_layer: type[nn.Module]):
        super().__init__()
        self.patch_size = patch_size
        steps = {16: 4, 8: 3}[patch_size]
        widths = [in_chans] + [embed_dim // 2 ** (steps - 1 - i) for i in range(steps)]
        layers: list[nn.Module] = []
        for i in range(steps):
            if i:
                layers.append(act_layer())
            layers.append(conv3x3_bn(widths[i], widths[i + 1], 2))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, C, H, W) -> tokens (B, Hp * Wp, D) and the grid (Hp, Wp) (ceil(H / patch), ...)."""
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class LPI(nn.Module):
    """Local patch interaction: depthwise 3x3 conv, activation, BatchNorm, depthwise 3x3 conv on the grid."""

    def __init__(self, dim: int, act_layer: type[nn.Module], kernel_size: int = 3):
        super().__init__()
        padding = kernel_size // 2
        self.conv1 = nn.Conv2d(dim, dim, kernel_size, padding=padding, groups=dim)
        self.act = act_layer()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size, padding=padding, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        B, N, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, height, width)
        x = self.conv2(self.bn(self.act(self.conv1(x))))
        return x.reshape(B, C, N).transpose(1, 2)


class XCA(nn.Module):
    """Cross-covariance attention: per head, softmax(temperature * q_hat k_hat^T) over channels, with q and k
    L2-normalised along the tokens; the (head_dim x head_dim) map mixes the value channels of every token.
    `on_attention` receives the (B, heads, head_dim, head_dim) probabilities."""

    attention_grad: bool = False  # always explicit: the probabilities are in the autograd graph anyway

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.on_attention: Callable[[torch.Tensor], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        # (3, B, heads, head_dim, N): channels as the "sequence", tokens as the features
        qkv = apply_linear(x, self.qkv).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 4, 1).unbind(0)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        probs = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)  # (B, heads, head_dim, head_dim)
        if self.on_attention is not None:
            self.on_attention(probs)
        x = (self.attn_drop(probs) @ v).permute(0, 3, 1, 2).reshape(B, N, C)
        return self.proj_drop(apply_linear(x, self.proj))


class XCABlock(nn.Module):
    """Pre-norm block over the patch tokens: XCA, then LPI, then the MLP, each branch LayerScaled."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eta: float, proj_drop: float,
                 attn_drop: float, drop_path: float, norm_eps: float, act_layer: type[nn.Module]):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = XCA(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.local_mp = LPI(dim, act_layer)
        self.drop_path3 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer, proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.gamma1 = nn.Parameter(torch.full((dim,), float(eta)))
        self.gamma3 = nn.Parameter(torch.full((dim,), float(eta)))
        self.gamma2 = nn.Parameter(torch.full((dim,), float(eta)))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path1(self.gamma1 * self.attn(self.norm1(x)))
        x = x + self.drop_path3(self.gamma3 * self.local_mp(self.norm3(x), height, width))
        return x + self.drop_path2(self.gamma2 * self.mlp(self.norm2(x)))


class ClassAttentionBlock(nn.Module):
    """timm's XCiT `ClassAttentionBlock` on [class token, patch tokens] (B, 1 + N, C): the class token takes
    the attention update, the patch tokens their own LayerScaled norm1 output; then norm2 over all tokens
    (`tokens_norm`) or the class token only; last the residual of [class token MLP update, patch tokens],
    which doubles the patch tokens (timm's and the original code's arithmetic)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eta: float, proj_drop: float,
                 attn_drop: float, norm_eps: float, act_layer: type[nn.Module], tokens_norm: bool):
        super().__init__()
        self.tokens_norm = tokens_norm
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = ClassAttn(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer, proj_drop)
        self.gamma1 = nn.Parameter(torch.full((dim,), float(eta)))
        self.gamma2 = nn.Parameter(torch.full((dim,), float(eta)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        x = x + self.gamma1 * torch.cat((self.attn(normed), normed[:, 1:]), dim=1)
        if self.tokens_norm:
            x = self.norm2(x)
        else:
            x = torch.cat((self.norm2(x[:, :1]), x[:, 1:]), dim=1)
        # timm (and the original code) add the block's output [MLP update, patch tokens] to its input, so the
        # patch tokens are doubled here; kept, as the released weights were trained with it
        return x + torch.cat((self.gamma2 * self.mlp(x[:, :1]), x[:, 1:]), dim=1)


class Xcit(ClassAttentionHeadMixin, nn.Module):
    architecture = "xcit"
    # why ToMe / EViT refuse it (vitkit.efficiency.adapters): read by the refusal, not by the model
    token_reduction_refusal = ("its local patch interaction convolves the patch grid in every block, which merged "
                               "or pruned tokens no longer form, and its cross-covariance attention attends over "
                               "channels, not tokens")
    class_blocks_attr = "cls_attn_blocks"

    def __init__(self, config: XcitConfig):
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        self.global_pool = c.global_pool
        self.num_features = self.embed_dim = c.embed_dim
        self.grad_checkpointing = False
        act_layer = ACT_LAYERS[c.act_layer]

        self.patch_embed = ConvPatchEmbed(c.patch_size, c.in_chans, c.embed_dim, act_layer)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = PositionalEncodingFourier(dim=c.embed_dim) if c.use_pos_embed else None
        self.pos_drop = nn.Dropout(c.pos_drop_rate)
        self.blocks = nn.ModuleList([
            XCABlock(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, c.eta, c.proj_drop_rate, c.attn_drop_rate,
                     c.drop_path_rate, c.norm_eps, act_layer)
            for _ in range(c.depth)
        ])
        self.cls_attn_blocks = nn.ModuleList([  # timm: dropout at drop_rate here, not proj_drop_rate
            ClassAttentionBlock(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, c.eta, c.drop_rate,
                                c.attn_drop_rate, c.norm_eps, act_layer, c.tokens_norm)
            for _ in range(c.cls_attn_layers)
        ])
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = self._linear_head(c.num_classes)
        self.feature_info = [FeatureInfo(c.embed_dim, c.patch_size, f"blocks.{i}") for i in range(c.depth)]
        self.init_weights()

    @property
    def input_spec(self) -> InputSpec:
        """Any size: the Fourier encoding is computed for the grid at hand (sizes that are multiples of the
        patch give whole patches; others work too, the stem rounding the grid up). timm's eval crop is 1.0,
        bicubic."""
        c = self.config
        spec = InputSpec(in_chans=c.in_chans, img_size=(c.img_size, c.img_size), fixed_size=False,
                         size_multiple=c.patch_size, crop_pct=1.0, interpolation="bicubic")
        return with_pretrained_cfg(spec, self)

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's init: truncated normal(0.02) for the class token and linears (convolutions and norms keep
        torch's defaults)."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ----- timm's model API ------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, C, H, W) -> the patch tokens the first block sees (no class token), and their grid."""
        x, (height, width) = self.patch_embed(x.to(self.cls_token.dtype))
        if self.pos_embed is not None:
            x = x + self.pos_embed(height, width)
        return self.pos_drop(x), (height, width)

    def _class_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the blocks -> normed [class token, patch tokens]."""
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for block in self.cls_attn_blocks:
            x = run_block(self, block, x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + patches, D): the class token, then the patch tokens, after the final norm."""
        x, (height, width) = self._embed(x)
        for block in self.blocks:
            x = run_block(self, block, x, height, width)
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
        """Outputs of chosen XCA blocks (patch tokens; the class-attention blocks are not among them), as timm
        returns them. `indices`: an int n takes the last n blocks, a list takes those blocks (negatives count
        from the end), None takes all. `norm` applies the final norm to each. `output_fmt`: "NCHW" maps or
        "NLC" tokens. Returns (forward_features output, intermediates) unless `intermediates_only`."""
        check_output_fmt(output_fmt)
        x, (height, width) = self._embed(x)
        x, intermediates = run_blocks(self.blocks, x, indices,
                                      lambda block, x: run_block(self, block, x, height, width),
                                      self.norm, norm, stop_early or intermediates_only)
        intermediates = layout_token_intermediates(intermediates, 0, (height, width), output_fmt)
        if intermediates_only:
            return intermediates
        return self._class_attention(x), intermediates

    def no_weight_decay(self) -> set[str]:
        """timm's set. `pos_embed` names the Fourier encoding's module, so its projection decays (as in timm);
        the XCA temperatures decay too (timm's XCA declares them, but timm's Xcit does not collect them)."""
        return {"pos_embed", "cls_token"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's groups: the embedding; each XCA block; each class-attention block after them; the final
        norm with the last; the head."""
        depth = len(self.blocks)
        cls_attn = [(rf"^cls_attn_blocks\.{j}\.", (depth + j,)) for j in range(len(self.cls_attn_blocks))]
        return {"stem": r"^cls_token|^pos_embed\.|^patch_embed\.",
                "blocks": [(r"^blocks\.(\d+)\.", None), *cls_attn, (r"^norm\.", (MERGE_WITH_PREVIOUS,))]}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (training only)."""
        self.grad_checkpointing = enable

    # ----- checkpoint adaptation -------------------------------------------------------------
    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fit weights to this model: the original release's layout as timm's (convert.py), the stem's first
        convolution refitted to another channel count. No position table to resample: any size works."""
        state_dict = from_original(state_dict, use_pos_embed=self.pos_embed is not None)
        adapt_stem_channels(state_dict, "patch_embed.proj.0.0.weight", self.patch_embed.proj[0][0].weight)
        return state_dict
