"""PVTv2, the Pyramid Vision Transformer v2 (Wang et al., "PVT v2: Improved Baselines with Pyramid Vision
Transformer", 2022), with the module and parameter names of timm's `PyramidVisionTransformerV2`, so timm
weights load unchanged.

Layout (timm's): `patch_embed` (overlapping 7x7 stride-4 convolution + LayerNorm), then `stages.i`, each
with a `downsample` from stage 1 on (overlapping 3x3 stride-2 convolution + LayerNorm), `blocks` and a
stage `norm`; the head is a mean over the map, dropout and `head` (a Linear). Each block is pre-norm
spatial-reduction attention (keys and values from the map shrunk by an `sr_ratio` strided convolution +
LayerNorm; with `linear`, from the map average-pooled to 7x7, a 1x1 convolution, LayerNorm and GELU) and a
convolutional MLP (fc1, 3x3 depthwise convolution, GELU, fc2; with `linear` a ReLU before the depthwise
convolution). Stage outputs are NCHW maps.

Differences from timm: `forward_intermediates` also gives NHWC and NLC (tokens); the fine `group_matcher`
groups by block (timm's groups by stage either way); `norm_eps` (see `PvtV2Config`) sets every norm's
epsilon, for transformers' checkpoints; inputs too small for a stage's spatial reduction are refused with
the smallest size that works instead of failing inside a convolution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import DropPath, apply_linear
from .._features import StagedModelMixin, adapt_stem_channels, init_linear_, run_block, take_indices
from .._protocol import FeatureInfo, InputSpec, with_pretrained_cfg

if TYPE_CHECKING:  # configs.py is imported by the package, which registers the architecture
    from .configs import PvtV2Config

TIMM_BLOCK_EPS, TORCH_EPS = 1e-6, 1e-5  # timm's LayerNorm default (blocks, stage norms); nn.LayerNorm's (the rest)


class OverlapPatchEmbed(nn.Module):
    """A strided convolution whose kernel overlaps its neighbours (padding kernel // 2), then LayerNorm;
    (B, C, H, W) -> (B, ceil(H / stride), ceil(W / stride), dim), channels last."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from a smaller map (timm's pvt_v2 `Attention`).

    `sr_ratio` > 1: an sr x sr stride-sr convolution and LayerNorm shrink the map before `kv`; `linear`:
    adaptive average pooling to 7x7, a 1x1 convolution, LayerNorm and GELU instead (a fixed 49 keys).

    `on_attention` (the attention-map capability `vitkit.capture_attention` looks for) is an optional
    callback; when set it receives each call's probabilities (B, heads, N, M): N = H * W queries, M the
    reduced keys (row-major over the reduced grid; M = N when sr_ratio is 1). They are computed beside
    the fused kernel, so outputs do not change."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, linear: bool, qkv_bias: bool, attn_drop: float,
                 proj_drop: float, eps: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dims entry {dim} is not divisible by its num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.sr_ratio = 1 if linear else sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pool = nn.AdaptiveAvgPool2d(7) if linear else None
        if linear or sr_ratio > 1:
            kernel = 1 if linear else sr_ratio
            self.sr = nn.Conv2d(dim, dim, kernel_size=kernel, stride=kernel)
            self.norm = nn.LayerNorm(dim, eps=eps)
        else:
            self.sr = self.norm = None
        self.act = nn.GELU() if linear else None
        self.on_attention: Callable[[torch.Tensor], None] | None = None

    def reduce(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """(B, N, C) tokens -> (B, M, C) the keys and values are made from."""
        if self.sr is None:
            return x
        B, _, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        if self.pool is not None:
            x = self.pool(x)
        x = self.norm(self.sr(x).flatten(2).transpose(1, 2))
        return self.act(x) if self.act is not None else x

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        q = apply_linear(x, self.q).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        kv = apply_linear(self.reduce(x, H, W), self.kv).reshape(B, -1, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        if self.on_attention is not None:
            self.on_attention(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1).detach())
        return self.proj_drop(apply_linear(out.transpose(1, 2).reshape(B, N, C), self.proj))


class MlpWithDepthwiseConv(nn.Module):
    """fc1, (ReLU with linear attention), 3x3 depthwise convolution on the token grid, GELU, fc2: the
    convolution gives PVTv2 its position information (no position embedding)."""

    def __init__(self, dim: int, hidden: int, extra_relu: bool, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.relu = nn.ReLU() if extra_relu else nn.Identity()
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = apply_linear(x, self.fc1, self.relu)
        B, N, C = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
        return self.drop(apply_linear(self.drop(self.act(x)), self.fc2))


class Block(nn.Module):
    """Pre-norm spatial-reduction attention and convolutional MLP, each residual with drop path."""

    def __init__(self, c: PvtV2Config, i: int, drop_path: float):
        super().__init__()
        dim = c.embed_dims[i]
        block_eps = c.norm_eps if c.norm_eps is not None else TIMM_BLOCK_EPS
        self.norm1 = nn.LayerNorm(dim, eps=block_eps)
        self.attn = SpatialReductionAttention(dim, c.num_heads[i], c.sr_ratios[i], c.linear, c.qkv_bias,
                                              c.attn_drop_rate, c.proj_drop_rate,
                                              c.norm_eps if c.norm_eps is not None else TORCH_EPS)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=block_eps)
        self.mlp = MlpWithDepthwiseConv(dim, int(dim * c.mlp_ratios[i]), c.linear, c.proj_drop_rate)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), H, W))
        return x + self.drop_path2(self.mlp(self.norm2(x), H, W))


class PvtV2Stage(nn.Module):
    """(Stage 1 on) an overlapping stride-2 patch embedding, the blocks on the token grid, a LayerNorm;
    takes NHWC (stage 0, from the stem) or NCHW maps and gives NCHW maps, as timm's stage."""

    def __init__(self, c: PvtV2Config, i: int, drop_paths: list[float]):
        super().__init__()
        self.grad_checkpointing = False
        embed_eps = c.norm_eps if c.norm_eps is not None else TORCH_EPS
        self.downsample = OverlapPatchEmbed(c.embed_dims[i - 1], c.embed_dims[i], 3, 2, embed_eps) if i else None
        self.blocks = nn.ModuleList([Block(c, i, dp) for dp in drop_paths])
        self.norm = nn.LayerNorm(c.embed_dims[i], eps=c.norm_eps if c.norm_eps is not None else TIMM_BLOCK_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x).permute(0, 3, 1, 2).contiguous()

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's output channels last, (B, H, W, C)."""
        if self.downsample is not None:
            x = self.downsample(x)
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        for block in self.blocks:
            x = run_block(self, block, x, H, W)
        return self.norm(x).reshape(B, H, W, C)


class PyramidVisionTransformerV2(StagedModelMixin, nn.Module):
    """timm's `PyramidVisionTransformerV2`; head reset and gradient checkpointing from `StagedModelMixin`."""

    architecture = "pvt_v2"
    stages_attr = "stages"

    def __init__(self, config: PvtV2Config):
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        self.patch_embed = OverlapPatchEmbed(c.in_chans, c.embed_dims[0], 7, 4,
                                             c.norm_eps if c.norm_eps is not None else TORCH_EPS)
        # drop path rate grows linearly with depth (timm's float32 values)
        rates = torch.linspace(0, c.drop_path_rate, sum(c.depths), device="cpu").split(list(c.depths))
        self.stages = nn.Sequential(*[PvtV2Stage(c, i, r.tolist()) for i, r in enumerate(rates)])
        self.feature_info = [FeatureInfo(dim, red, f"stages.{i}")
                             for i, (dim, red) in enumerate(zip(c.embed_dims, c.reductions(), strict=True))]
        self.num_features = self.head_hidden_size = c.embed_dims[-1]
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = nn.Linear(self.num_features, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's `_init_weights`: truncated normal(0.02) linears, He-normal (fan out) convolutions, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def input_spec(self) -> InputSpec:
        """timm's pretrained cfg for PVTv2: 224, crop 0.9, bicubic. Any size at least `config.min_size()` works
        (overlapping embeddings pad; the spatial reductions need grids no smaller than their kernels)."""
        c = self.config
        spec = InputSpec(in_chans=c.in_chans, img_size=(c.img_size, c.img_size), fixed_size=False, size_multiple=1,
                         crop_pct=0.9, interpolation="bicubic")
        return with_pretrained_cfg(spec, self)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"PVTv2 expects images of shape (B, C, H, W), got shape {tuple(x.shape)}")
        c = self.config
        H, W = x.shape[-2:]
        for i, (r, red) in enumerate(zip(c.sr_ratios[: len(self.stages)], c.reductions(), strict=False)):
            if not c.linear and (-(-H // red) < r or -(-W // red) < r):
                raise ValueError(f"input {H}x{W} gives stage {i} a {-(-H // red)}x{-(-W // red)} grid, smaller than "
                                 f"its sr_ratio {r}; use sides of at least {c.min_size()}")

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.patch_embed(x.to(self.patch_embed.proj.weight.dtype))

    # ----- timm's model API ------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self._embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.config.global_pool == "avg":
            x = x.mean(dim=(-1, -2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False, stop_early: bool = False):
        """Stage outputs (each already through its stage norm, so `norm` changes nothing, as in timm): NCHW
        maps, or NHWC, or NLC tokens (B, H * W, C); `indices` as timm (int n = last n stages, list = those
        stages, None = all)."""
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        take, last = take_indices(len(self.stages), indices)
        stages = self.stages[: last + 1] if stop_early or intermediates_only else self.stages
        x = self._embed(x)
        intermediates = []
        for i, stage in enumerate(stages):
            y = stage.forward_tokens(x)
            x = y.permute(0, 3, 1, 2).contiguous()
            if i in take:
                intermediates.append(x if output_fmt == "NCHW" else y if output_fmt == "NHWC" else y.flatten(1, 2))
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop the stages after the last one `indices` needs (and the head); returns the stage indices
        `forward_intermediates` will give. The norms belong to the stages, so `prune_norm` has nothing to drop."""
        take, last = take_indices(len(self.stages), indices)
        self.stages = self.stages[: last + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return sorted(take)

    def get_classifier(self) -> nn.Module:
        return self.head

    def _reset_head(self, num_classes: int, global_pool: str | None) -> None:
        if global_pool is not None:
            self.config.check_pool(global_pool)
        weight = self.patch_embed.proj.weight  # the new head on the model's device and dtype, as timm
        self.head = (nn.Linear(self.num_features, num_classes, device=weight.device, dtype=weight.dtype)
                     if num_classes > 0 else nn.Identity())
        init_linear_(self.head)

    def no_weight_decay(self) -> set[str]:
        return set()  # no position embeddings: the depthwise convolutions carry position

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's coarse groups (the stem, then each stage); fine: each block, a stage's downsampling with
        its first block and its norm with its last; the head after."""
        return {"stem": r"^patch_embed", "blocks": r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)),
            (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^stages\.(\d+)\.norm", (99999,)),
        ]}

    # ----- checkpoint adaptation -------------------------------------------------------------
    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The original PVT release's names (timm's `checkpoint_filter_fn`) and RGB stem weights refit to
        another channel count, as timm does for `in_chans`."""
        from .convert import from_original

        state_dict = from_original(state_dict)
        adapt_stem_channels(state_dict, "patch_embed.proj.weight", self.patch_embed.proj.weight)
        return state_dict
