"""MetaFormer (Yu et al., "MetaFormer Is Actually What You Need for Vision", CVPR 2022, and "MetaFormer
Baselines for Vision", TPAMI 2023) with timm's module and parameter names (timm's `MetaFormer`), so timm's
PoolFormer V1 / V2, ConvFormer and CAFormer weights load unchanged.

One framework, four stages: a 7x7 stride-4 conv stem, then per stage a 3x3 stride-2 downsampling conv (none
for stage 0, and none where a stage keeps the previous width, as timm) and MetaFormer blocks:
`x = res_scale(x) + layer_scale(token_mixer(norm1(x)))`, then the same with an MLP. The token mixer is pooling
(PoolFormer), an inverted separable convolution (ConvFormer) or self-attention (CAFormer's last two stages,
which run on (B, N, C) tokens and hand NCHW maps on). Head (timm's): pool, norm, flatten, dropout, then a
linear layer or the two-layer MLP head (`head.fc.fc1`, `head.fc.norm`, `head.fc.fc2`).

Differences from timm: layers are named by strings in the config (configs.py); `norm_before_pool` (vitkit's
own, for Hugging Face PoolFormer checkpoints) normalises the whole map before pooling; feature_info reports
each stage's true reduction (timm assumes 2**(i+2) even where a stage does not downsample).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ...layers import DropPath, apply_linear
from ...layers.pooling import GlobalPool2d
from .._features import ConvStagesMixin, adapt_stem_channels, forward_blocks
from .._protocol import FeatureInfo, InputSpec, with_pretrained_cfg
from .layers import ACTIVATIONS, NORM_LAYERS, Attention, ConvMlp, Pooling, Scale, SepConv, SquaredReLU

if TYPE_CHECKING:
    from .configs import MetaFormerConfig


def make_norm(name: str, dim: int) -> nn.Module:
    return NORM_LAYERS[name][0](dim)


class Stem(nn.Module):
    """7x7 stride-4 convolution (padding 2), then the downsample norm (none in PoolFormer V1)."""

    def __init__(self, in_chans: int, dim: int, norm: str | None):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel_size=7, stride=4, padding=2)
        self.norm = make_norm(norm, dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Downsampling(nn.Module):
    """Norm, then a 3x3 stride-2 convolution (padding 1)."""

    def __init__(self, in_chs: int, out_chs: int, norm: str | None):
        super().__init__()
        self.norm = make_norm(norm, in_chs) if norm else nn.Identity()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


def make_token_mixer(c: MetaFormerConfig, stage: int) -> nn.Module:
    kind, dim = c.token_mixers[stage], c.dims[stage]
    if kind == "pooling":
        return Pooling(c.pool_size)
    if kind == "sepconv":
        return SepConv(dim, c.expansion_ratio, c.kernel_size, c.padding)
    if kind == "attention":
        return Attention(dim, c.head_dim, c.num_heads, c.qkv_bias, c.proj_bias, c.proj_drop_rate)
    return nn.Identity()


class MetaFormerBlock(nn.Module):
    """norm1 -> token mixer -> drop path -> layer scale, added to the res-scaled input; then the same with
    norm2 and the 4x MLP. Scales are identities when their init value is None."""

    def __init__(self, c: MetaFormerConfig, stage: int, drop_path: float):
        super().__init__()
        dim, nchw = c.dims[stage], not c.uses_tokens(stage)
        ls, rs = c.layer_scale_init_values[stage], c.res_scale_init_values[stage]
        self.norm1 = make_norm(c.norm_layers[stage], dim)
        self.token_mixer = make_token_mixer(c, stage)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale1 = Scale(dim, ls, nchw) if ls is not None else nn.Identity()
        self.res_scale1 = Scale(dim, rs, nchw) if rs is not None else nn.Identity()
        self.norm2 = make_norm(c.norm_layers[stage], dim)
        self.mlp = ConvMlp(dim, 4 * dim, ACTIVATIONS[c.mlp_act], c.mlp_bias, c.proj_drop_rate, use_conv=nchw)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale2 = Scale(dim, ls, nchw) if ls is not None else nn.Identity()
        self.res_scale2 = Scale(dim, rs, nchw) if rs is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._add(self.res_scale1(x), self.token_mixer(self.norm1(x)), self.layer_scale1, self.drop_path1)
        return self._add(self.res_scale2(x), self.mlp(self.norm2(x)), self.layer_scale2, self.drop_path2)

    def _add(self, shortcut: torch.Tensor, y: torch.Tensor, layer_scale: nn.Module, drop_path: nn.Module):
        """shortcut + layer_scale(drop_path(y)); a layer scale without drop path is one addcmul (one pass over
        the map instead of two: these blocks are memory-bound on CPU)."""
        if isinstance(layer_scale, Scale) and (isinstance(drop_path, nn.Identity) or not self.training):
            return torch.addcmul(shortcut, layer_scale.scale.view(layer_scale.shape), y)
        return shortcut + layer_scale(drop_path(y))


class MetaFormerStage(nn.Module):
    """Downsampling (when the width changes), then the blocks; attention stages flatten the map to tokens
    around their blocks. Input and output are NCHW maps."""

    def __init__(self, c: MetaFormerConfig, stage: int, in_chs: int, drop_paths: list[float]):
        super().__init__()
        self.grad_checkpointing = False
        self.use_nchw = not c.uses_tokens(stage)
        out_chs = c.dims[stage]
        self.downsample = nn.Identity() if in_chs == out_chs else Downsampling(in_chs, out_chs, c.downsample_norm)
        self.blocks = nn.Sequential(*[MetaFormerBlock(c, stage, dp) for dp in drop_paths])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        B, C, H, W = x.shape
        if not self.use_nchw:
            x = x.flatten(2).transpose(1, 2)
        x = forward_blocks(self, x)
        if not self.use_nchw:
            x = x.transpose(1, 2).reshape(B, C, H, W)
        return x


class MlpHead(nn.Module):
    """timm's MetaFormer MLP head: fc1 (4x), SquaredReLU, LayerNorm, dropout, fc2."""

    def __init__(self, dim: int, num_classes: int, drop_rate: float, mlp_ratio: float = 4):
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = SquaredReLU()
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_linear(self.head_drop(self.norm(apply_linear(x, self.fc1, self.act))), self.fc2)


class MetaFormerHead(nn.Module):
    """timm's head (an nn.Sequential there, same names): global_pool, norm, flatten, drop, fc. With
    `norm_before_pool` the norm runs on the map first (Hugging Face PoolFormer)."""

    def __init__(self, c: MetaFormerConfig, dim: int):
        super().__init__()
        self.dim, self.use_mlp_head, self.drop_rate = dim, c.use_mlp_head, c.drop_rate
        self.norm_before_pool = c.norm_before_pool
        self.global_pool = GlobalPool2d(c.global_pool)
        self.norm = make_norm(c.output_norm, dim)
        self.flatten = nn.Flatten(1) if c.global_pool else nn.Identity()
        self.drop = nn.Dropout(c.drop_rate) if c.use_mlp_head else nn.Identity()
        self.fc = self._classifier(c.num_classes)

    def _classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.use_mlp_head:
            return MlpHead(self.dim, num_classes, self.drop_rate)
        return nn.Linear(self.dim, num_classes)

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        if pool_type is not None:
            self.global_pool = GlobalPool2d(pool_type)  # refuses an unknown pool before anything changes
            self.flatten = nn.Flatten(1) if pool_type else nn.Identity()
        self.fc = self._classifier(num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.norm_before_pool:
            x = self.global_pool(self.norm(x))
        else:
            x = self.norm(self.global_pool(x))
        x = self.drop(self.flatten(x))
        return x if pre_logits else self.fc(x)


class MetaFormer(ConvStagesMixin, nn.Module):
    """timm's `MetaFormer`; forward_features / forward_head / forward_intermediates, pruning, head reset and gradient
    checkpointing come from `ConvStagesMixin`."""

    architecture = "metaformer"

    def __init__(self, config: MetaFormerConfig):
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        self.stem = Stem(c.in_chans, c.dims[0], c.downsample_norm)
        # drop path rate grows linearly with depth (timm's calculate_drop_path_rates, stagewise=True)
        rates = torch.linspace(0, c.drop_path_rate, sum(c.depths), device="cpu").split(list(c.depths))
        stages, self.feature_info, prev, reduction = [], [], c.dims[0], 4
        for i, dim in enumerate(c.dims):
            stages.append(MetaFormerStage(c, i, prev, [float(r) for r in rates[i]]))
            reduction *= 2 if dim != prev else 1
            self.feature_info.append(FeatureInfo(dim, reduction, f"stages.{i}"))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev
        self.norm_pre = nn.Identity()  # timm has none; kept so `prune_intermediate_layers(prune_norm=...)` works
        self.head = MetaFormerHead(c, prev)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's `_init_weights`: truncated normal(0.02) for convs and linears, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def input_spec(self) -> InputSpec:
        """timm's pretrained cfg: 224, bicubic (crop_pct per named model); any size divisible by the total
        stride works."""
        size = self.config.img_size
        spec = InputSpec(in_chans=self.config.in_chans, img_size=(size, size), fixed_size=False,
                         size_multiple=self.feature_info[-1].reduction, crop_pct=1.0, interpolation="bicubic")
        return with_pretrained_cfg(spec, self)

    # ----- timm's model API ------------------------------------------------------------------
    def _reset_head(self, num_classes: int, global_pool: str | None) -> None:
        self.head.reset(num_classes, global_pool)

    def no_weight_decay(self) -> set[str]:
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """The stem, then each stage's downsample with its first block; the head after."""
        return {"stem": r"^stem", "blocks": r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)),
            (r"^stages\.(\d+)\.blocks\.(\d+)", None),
        ]}

    # ----- checkpoint adaptation -------------------------------------------------------------
    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """RGB stem weights to another channel count (gray: summed), as timm does for `in_chans`; Hugging Face
        PoolFormer names to timm's."""
        from .convert import convert_state_dict, is_hf_state_dict

        if is_hf_state_dict(state_dict):
            state_dict = convert_state_dict(state_dict)
        state_dict = dict(state_dict)
        adapt_stem_channels(state_dict, "stem.conv.weight", self.stem.conv.weight)
        return state_dict
