"""ConvNeXt V1 and V2 (Liu et al. 2022; Woo et al. 2023) with timm's module and parameter names, so timm
ConvNeXt weights load unchanged.

Layout (timm's): `stem` (patchify conv + LayerNorm2d), `stages.i` (`downsample` = LayerNorm2d + 2x2 stride-2
conv from stage 1 on, then `blocks`), `norm_pre` (identity: the norm sits in the head), and `head`
(`global_pool`, `norm`, `fc`: timm's NormMlpClassifierHead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import DropPath, Mlp, apply_linear
from ...layers.pooling import MAP_POOL_TYPES, GlobalPool2d
from .._features import ConvStagesMixin, adapt_stem_channels, forward_blocks
from .._protocol import FeatureInfo, InputSpec, with_pretrained_cfg

if TYPE_CHECKING:
    from .configs import ConvNeXtConfig

POOL_TYPES = MAP_POOL_TYPES


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2's GRN: scales each channel by its spatial L2 norm relative to the channel mean, which keeps
    channels from collapsing. Zero-initialised `weight`/`bias` make it an identity at start (timm's names)."""

    def __init__(self, dim: int, eps: float = 1e-6, channels_last: bool = True):
        super().__init__()
        self.eps = eps
        self.spatial_dim, self.channel_dim = ((1, 2), -1) if channels_last else ((2, 3), 1)
        self.wb_shape = (1, 1, 1, -1) if channels_last else (1, -1, 1, 1)
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_g = x.norm(p=2, dim=self.spatial_dim, keepdim=True)
        x_n = x_g / (x_g.mean(dim=self.channel_dim, keepdim=True) + self.eps)
        return x + torch.addcmul(self.bias.view(self.wb_shape), self.weight.view(self.wb_shape), x * x_n)


class ConvNeXtMlp(nn.Module):
    """The block's MLP as 1x1 convolutions on NCHW (`conv_mlp`) and/or with GRN after the activation (V2):
    timm's Mlp(use_conv=True) / GlobalResponseNormMlp, same parameter names (fc1, grn, fc2)."""

    def __init__(self, dim: int, hidden: int, use_conv: bool, use_grn: bool):
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, kernel_size=1)) if use_conv else nn.Linear
        self.fc1 = layer(dim, hidden)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(hidden, channels_last=not use_conv) if use_grn else nn.Identity()
        self.fc2 = layer(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_linear(self.grn(apply_linear(x, self.fc1, self.act)), self.fc2)


class ConvNeXtBlock(nn.Module):
    """Depthwise kxk conv, LayerNorm, 4x MLP, LayerScale (`gamma`), drop path, residual.

    Without `conv_mlp` the norm and MLP run channels-last (LayerNorm + Linear), as timm's default; with it
    they stay NCHW (LayerNorm2d + 1x1 convs). Both give the same function, the weights differ in shape."""

    def __init__(self, dim: int, kernel_size: int, conv_mlp: bool, conv_bias: bool, use_grn: bool,
                 ls_init_value: float | None, norm_eps: float, drop_path: float):
        super().__init__()
        self.use_conv_mlp = conv_mlp
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=conv_bias)
        self.norm = (LayerNorm2d if conv_mlp else nn.LayerNorm)(dim, eps=norm_eps)
        if conv_mlp or use_grn:
            self.mlp = ConvNeXtMlp(dim, 4 * dim, use_conv=conv_mlp, use_grn=use_grn)
        else:
            self.mlp = Mlp(dim, 4 * dim)  # vitkit's transformer MLP: same names (fc1, fc2), chunked CPU inference
        self.gamma = nn.Parameter(torch.full((dim,), float(ls_init_value))) if ls_init_value is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.mlp(self.norm(x))
        else:
            x = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x * self.gamma.reshape(1, -1, 1, 1)
        return self.drop_path(x) + shortcut


class ConvNeXtStage(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, blocks: list[nn.Module], norm_eps: float,
                 conv_bias: bool):
        super().__init__()
        self.grad_checkpointing = False
        if in_chs != out_chs or stride > 1:
            self.downsample = nn.Sequential(
                LayerNorm2d(in_chs, eps=norm_eps),
                nn.Conv2d(in_chs, out_chs, kernel_size=stride, stride=stride, bias=conv_bias),
            )
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return forward_blocks(self, x)


class NormMlpClassifierHead(nn.Module):
    """Pool, LayerNorm2d, flatten, dropout, linear: timm's head when `head_norm_first=False`."""

    def __init__(self, dim: int, num_classes: int, pool_type: str, norm_eps: float, drop_rate: float):
        super().__init__()
        self.global_pool = GlobalPool2d(pool_type)
        self.norm = LayerNorm2d(dim, eps=norm_eps)
        self.flatten = nn.Flatten(1) if pool_type else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        if pool_type is not None:
            self.global_pool = GlobalPool2d(pool_type)
            self.flatten = nn.Flatten(1) if pool_type else nn.Identity()
        self.fc = nn.Linear(self.norm.normalized_shape[0], num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.flatten(self.norm(self.global_pool(x))))
        return x if pre_logits else self.fc(x)


class ConvNeXt(ConvStagesMixin, nn.Module):
    """timm's `ConvNeXt`; forward_features / forward_head / forward_intermediates, pruning, head reset and gradient
    checkpointing come from `ConvStagesMixin`."""

    architecture = "convnext"

    def __init__(self, config: ConvNeXtConfig):
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        eps = c.norm_eps if c.norm_eps is not None else 1e-6  # timm's LayerNorm / LayerNorm2d default
        self.stem = nn.Sequential(
            nn.Conv2d(c.in_chans, c.dims[0], kernel_size=c.patch_size, stride=c.patch_size, bias=c.conv_bias),
            LayerNorm2d(c.dims[0], eps=eps),
        )
        # drop path rate grows linearly with depth (timm's float32 values)
        rates = torch.linspace(0, c.drop_path_rate, sum(c.depths), device="cpu").split(list(c.depths))
        stages, self.feature_info, prev = [], [], c.dims[0]
        for i, (dim, kernel) in enumerate(zip(c.dims, c.kernel_sizes, strict=True)):
            blocks = [ConvNeXtBlock(dim, kernel, c.conv_mlp, c.conv_bias, c.use_grn, c.ls_init_value, eps, float(r))
                      for r in rates[i]]
            stages.append(ConvNeXtStage(prev, dim, 2 if i > 0 else 1, blocks, eps, c.conv_bias))
            self.feature_info.append(FeatureInfo(dim, c.patch_size * 2**i, f"stages.{i}"))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev
        self.norm_pre = nn.Identity()  # timm: a LayerNorm2d here only with head_norm_first
        head_eps = c.head_norm_eps if c.head_norm_eps is not None else eps
        self.head = NormMlpClassifierHead(prev, c.num_classes, c.global_pool, head_eps, c.drop_rate)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's `_init_weights`: truncated normal(0.02) for convs and linears, zero biases, head scaled."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
                if isinstance(module, nn.Linear) and name.startswith("head."):
                    module.weight.mul_(self.config.head_init_scale)
                    module.bias.mul_(self.config.head_init_scale)

    @property
    def input_spec(self) -> InputSpec:
        """timm's pretrained cfg for ConvNeXt: 224 (or the config's img_size), crop 0.875, bicubic; any size
        divisible by the total stride."""
        size = self.config.img_size or 224
        spec = InputSpec(in_chans=self.config.in_chans, img_size=(size, size), fixed_size=False,
                         size_multiple=self.feature_info[-1].reduction, crop_pct=0.875, interpolation="bicubic")
        return with_pretrained_cfg(spec, self)

    # ----- timm's model API ------------------------------------------------------------------
    def _reset_head(self, num_classes: int, global_pool: str | None) -> None:
        self.head.reset(num_classes, global_pool)  # GlobalPool refuses an unknown pool before anything changes

    def no_weight_decay(self) -> set[str]:
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's groups: the stem, then each stage's downsample with its first block; the head after."""
        return {"stem": r"^stem", "blocks": r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)),
            (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^norm_pre", (99999,)),
        ]}

    # ----- checkpoint adaptation -------------------------------------------------------------
    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """RGB stem weights to another channel count (gray: summed), as timm does for `in_chans`."""
        state_dict = dict(state_dict)
        adapt_stem_channels(state_dict, "stem.0.weight", self.stem[0].weight)
        return state_dict
