"""EfficientFormer (Li et al., "EfficientFormer: Vision Transformers at MobileNet Speed", NeurIPS 2022), with
the module and parameter names of timm's `EfficientFormer`, so timm's weights (and, through convert.py, the
original snap-research release's) load unchanged.

Layout (timm's): `stem` (two 3x3 stride-2 convolutions, each with BatchNorm and ReLU: stride 4), then
`stages.i`, each a `downsample` (3x3 stride-2 convolution + BatchNorm; none in stage 0) and `blocks`. The
blocks are Meta4D (`MetaBlock2d`) on NCHW maps: x + ls1(pool(x) - x), then x + ls2(conv MLP), the MLP being
1x1 convolution, BatchNorm, GELU, 1x1 convolution, BatchNorm. The last `num_vit` blocks of the last stage are
Meta3D (`MetaBlock1d`) on tokens, after a `Flat` (its own index in `blocks`, as timm): pre-LayerNorm
attention with learned per-head biases indexed by the relative offset of two grid cells (`attention_biases`,
`attention_bias_idxs`; 8 heads, key dim 32, value dim 128) and a pre-LayerNorm MLP, each with LayerScale.
Then `norm` (LayerNorm on the tokens: `forward_features` gives (B, N, C)), a mean over tokens, and the
distillation pair `head` / `head_dist`, whose mean is the output (both apart with `set_distilled_training`
while training, as timm).

Fixed input size: the attention biases cover one grid, ceil(img_size / 32) a side, so the model runs at
`config.img_size` only and refuses other inputs with a ValueError naming the size (timm does not resample
these biases either). `create_model(..., img_size=...)` builds biases for that size's grid; timm's 224
weights do not load into them (`adapt_state_dict` says so).

Differences from timm: `img_size` is vitkit's own (timm fixes a 7x7 bias grid); the bias cache timm keeps per
device in eval is not kept (the index is cheap); `forward_intermediates` gives the last stage as an NCHW map
of its own grid (timm assumes it halves the previous one) and feature_info follows `downsamples`;
attention modules offer `on_attention`. Hugging Face transformers no longer has EfficientFormer (removed),
so there is no transformers conversion or peer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...layers import DropPath, Mlp, apply_linear
from .._features import StagedModelMixin, adapt_stem_channels, forward_blocks, init_linear_, take_indices
from .._protocol import FeatureInfo, InputSpec, with_pretrained_cfg

if TYPE_CHECKING:  # configs.py is imported by the package, which registers the architecture
    from .configs import EfficientFormerConfig

KEY_DIM, NUM_HEADS, ATTN_RATIO = 32, 8, 4  # timm's Attention defaults, which EfficientFormer uses


class Attention(nn.Module):
    """Multi-head self-attention over a fixed `resolution` x `resolution` grid with learned attention biases
    (timm's efficientformer `Attention`): one bias per head and relative offset (|dy|, |dx|), gathered into a
    (heads, N, N) table through the `attention_bias_idxs` buffer. q, k (key_dim) and v (attn_ratio x key_dim)
    come from one `qkv` projection, split per head.

    `on_attention` (the capability `vitkit.capture_attention` looks for) is an optional callback given each
    call's probabilities (B, heads, N, N), row-major over the grid; they are the ones the output is made
    from (detached unless `attention_grad`)."""

    attention_grad: bool = False

    def __init__(self, dim: int, resolution: int, key_dim: int = KEY_DIM, num_heads: int = NUM_HEADS,
                 attn_ratio: int = ATTN_RATIO):
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = num_heads, key_dim, int(attn_ratio * key_dim)
        self.scale = key_dim**-0.5
        self.resolution = resolution
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + self.val_dim))
        self.proj = nn.Linear(num_heads * self.val_dim, dim)
        ys, xs = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
        pos = torch.stack((ys.flatten(), xs.flatten()))  # (2, N)
        offset = (pos[:, :, None] - pos[:, None, :]).abs()
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        self.register_buffer("attention_bias_idxs", offset[0] * resolution + offset[1])
        self.on_attention: Callable[[torch.Tensor], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = apply_linear(x, self.qkv).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = attn.softmax(dim=-1)
        if self.on_attention is not None:
            self.on_attention(attn if self.attention_grad else attn.detach())
        return apply_linear((attn @ v).transpose(1, 2).reshape(B, N, -1), self.proj)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, key_dim={self.key_dim}, resolution={self.resolution}"


class Stem4(nn.Sequential):
    """Two 3x3 stride-2 convolutions (half the width, then the full width), each with BatchNorm and ReLU."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.add_module("conv1", nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1))
        self.add_module("norm1", nn.BatchNorm2d(dim // 2))
        self.add_module("act1", nn.ReLU())
        self.add_module("conv2", nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1))
        self.add_module("norm2", nn.BatchNorm2d(dim))
        self.add_module("act2", nn.ReLU())


class Downsample(nn.Module):
    """3x3 stride-2 convolution (padding 1), then BatchNorm."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Flat(nn.Module):
    """(B, C, H, W) map -> (B, H * W, C) tokens, row-major."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class Pooling(nn.Module):
    """PoolFormer's token mixer: average pooling (padding not counted) minus the input."""

    def __init__(self, pool_size: int):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class LayerScale(nn.Module):
    """Per-channel scale `gamma` on the last dimension (tokens), or on dim 1 with `nchw` (maps)."""

    def __init__(self, dim: int, init_value: float, nchw: bool = False):
        super().__init__()
        self.nchw = nchw
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.gamma.view(1, -1, 1, 1) if self.nchw else self.gamma)


class ConvMlpWithNorm(nn.Module):
    """1x1 convolution, BatchNorm, GELU, dropout, 1x1 convolution, BatchNorm, dropout."""

    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.norm1(self.fc1(x))))
        return self.drop(self.norm2(self.fc2(x)))


class MetaBlock2d(nn.Module):
    """Meta4D: pooling token mixer and conv MLP on NCHW maps, each residual with LayerScale and drop path."""

    def __init__(self, c: EfficientFormerConfig, dim: int, drop_path: float):
        super().__init__()
        self.token_mixer = Pooling(c.pool_size)
        self.ls1 = LayerScale(dim, c.layer_scale_init_value, nchw=True)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = ConvMlpWithNorm(dim, int(dim * c.mlp_ratios), c.proj_drop_rate)
        self.ls2 = LayerScale(dim, c.layer_scale_init_value, nchw=True)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.token_mixer(x)))
        return x + self.drop_path2(self.ls2(self.mlp(x)))


class MetaBlock1d(nn.Module):
    """Meta3D: pre-LayerNorm attention with attention biases and pre-LayerNorm MLP on (B, N, C) tokens,
    each residual with LayerScale and drop path."""

    def __init__(self, c: EfficientFormerConfig, dim: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim, c.grid_size())
        self.ls1 = LayerScale(dim, c.layer_scale_init_value)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * c.mlp_ratios), drop=c.proj_drop_rate)
        self.ls2 = LayerScale(dim, c.layer_scale_init_value)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.token_mixer(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class EfficientFormerStage(nn.Module):
    """Downsampling (when the stage has it), then the blocks; in the last stage, the final `num_vit` blocks
    are Meta3D after a `Flat`, so the stage gives (B, N, C) tokens; otherwise an NCHW map."""

    def __init__(self, c: EfficientFormerConfig, i: int, in_chs: int, drop_paths: list[float]):
        super().__init__()
        self.grad_checkpointing = False
        dim = c.embed_dims[i]
        self.downsample = Downsample(in_chs, dim) if c.stage_downsamples()[i] else nn.Identity()
        num_vit = c.num_vit if i == len(c.depths) - 1 else 0
        first_3d = len(drop_paths) - num_vit  # index of the first Meta3D block
        blocks: list[nn.Module] = []
        for j, dp in enumerate(drop_paths):
            if j == first_3d:
                blocks.append(Flat())
            blocks.append(MetaBlock1d(c, dim, dp) if j >= first_3d else MetaBlock2d(c, dim, dp))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return forward_blocks(self, x)


class EfficientFormer(StagedModelMixin, nn.Module):
    """timm's `EfficientFormer`; pruning and gradient checkpointing come from `StagedModelMixin`."""

    architecture = "efficientformer"
    stages_attr, final_norm_attr = "stages", "norm"

    def __init__(self, config: EfficientFormerConfig):
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        self.stem = Stem4(c.in_chans, c.embed_dims[0])
        # drop path rate grows linearly with depth (timm's calculate_drop_path_rates, stagewise=True)
        rates = torch.linspace(0, c.drop_path_rate, sum(c.depths), device="cpu").split(list(c.depths))
        stages, prev = [], c.embed_dims[0]
        for i, dim in enumerate(c.embed_dims):
            stages.append(EfficientFormerStage(c, i, prev, [float(r) for r in rates[i]]))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.feature_info = [FeatureInfo(dim, red, f"stages.{i}")
                             for i, (dim, red) in enumerate(zip(c.embed_dims, c.reductions(), strict=True))]
        self.num_features = self.head_hidden_size = prev
        self.norm = nn.LayerNorm(prev)
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head, self.head_dist = self._heads(c.num_classes)
        self.distilled_training = False  # set_distilled_training(True): both heads' outputs while training
        self.init_weights()

    def _heads(self, num_classes: int) -> tuple[nn.Module, nn.Module]:
        if num_classes <= 0:
            return nn.Identity(), nn.Identity()
        weight = self.stem.conv1.weight  # on the model's device and dtype, as timm
        heads = [nn.Linear(self.num_features, num_classes, device=weight.device, dtype=weight.dtype) for _ in "ab"]
        for head in heads:
            init_linear_(head)
        return heads[0], heads[1]

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's `_init_weights`: truncated normal(0.02) linears with zero biases; convolutions, norms and
        attention biases keep torch's defaults / zeros."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def input_spec(self) -> InputSpec:
        """timm's pretrained cfg: fixed 224 input (the attention biases' grid), crop 0.95, bicubic."""
        size = self.config.img_size
        spec = InputSpec(in_chans=self.config.in_chans, img_size=(size, size), fixed_size=True,
                         size_multiple=self.feature_info[-1].reduction, crop_pct=0.95, interpolation="bicubic")
        return with_pretrained_cfg(spec, self)

    def check_input(self, x: torch.Tensor) -> None:
        size = self.config.img_size
        if x.ndim != 4 or tuple(x.shape[-2:]) != (size, size):
            got = "x".join(map(str, x.shape[-2:])) if x.ndim == 4 else f"a tensor of shape {tuple(x.shape)}"
            grid = self.config.grid_size()
            raise ValueError(f"EfficientFormer has a fixed input size: it takes {size}x{size} images (B, C, H, W) "
                             f"(its attention biases cover a {grid}x{grid} grid), got {got}")

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stem(x.to(self.stem.conv1.weight.dtype))

    # ----- timm's model API ------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens of the last stage's grid after the final LayerNorm."""
        return self.norm(self.stages(self._stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        if self.config.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        if pre_logits:
            return x
        x, x_dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training:
            return x, x_dist  # distillation training: both predictions
        return (x + x_dist) / 2

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))

    def set_distilled_training(self, enable: bool = True) -> None:
        self.distilled_training = enable

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False, stop_early: bool = False):
        """Stage outputs as NCHW maps (the last stage's tokens reshaped to its grid, after the final norm
        with `norm=True`); an int n takes the last n stages, a list those stages, None all. The final
        output, as `forward_features`, is tokens."""
        if output_fmt != "NCHW":
            raise ValueError(f"EfficientFormer gives NCHW maps only; output_fmt={output_fmt!r}")
        take, last = take_indices(len(self.stages), indices)
        final = len(self.stages) - 1
        stages = self.stages[: last + 1] if stop_early or intermediates_only else self.stages
        x = self._stem(x)
        intermediates = []
        for i, stage in enumerate(stages):
            B, _, H, W = x.shape if x.ndim == 4 else (0, 0, 0, 0)
            if not isinstance(stage.downsample, nn.Identity):
                H, W = -(-H // 2), -(-W // 2)
            x = stage(x)
            if i in take:
                y = self.norm(x) if norm and i == final and x.ndim == 3 else x
                intermediates.append(y.transpose(1, 2).reshape(B, -1, H, W) if y.ndim == 3 else y)
        if intermediates_only:
            return intermediates
        return (self.norm(x) if len(stages) - 1 == final else x), intermediates

    def get_classifier(self) -> tuple[nn.Module, nn.Module]:
        return self.head, self.head_dist

    def _reset_head(self, num_classes: int, global_pool: str | None) -> None:
        if global_pool is not None:
            self.config.check_pool(global_pool)  # before anything changes
        self.head, self.head_dist = self._heads(num_classes)

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if "attention_biases" in name}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's coarse groups (the stem, each stage with the final norm joining the last); fine: each
        block, a stage's downsampling with its first block; the head (`head`, `head_dist`) after."""
        return {"stem": r"^stem", "blocks": [(r"^stages\.(\d+)", None), (r"^norm", (99999,))] if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)),
            (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^norm", (99999,)),
        ]}

    # ----- checkpoint adaptation -------------------------------------------------------------
    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The original release's names (timm's `checkpoint_filter_fn`); RGB stem weights refit to another
        channel count, as timm does for `in_chans`; attention biases of another grid refused with the sizes."""
        from .convert import from_original

        state_dict = dict(from_original(state_dict))
        adapt_stem_channels(state_dict, "stem.conv1.weight", self.stem.conv1.weight)
        ours = self.config.grid_size()
        for key, value in state_dict.items():
            if key.endswith("attention_biases") and value.ndim == 2 and value.shape[1] != ours * ours:
                theirs = round(value.shape[1] ** 0.5)
                raise ValueError(f"{key} covers a {theirs}x{theirs} grid; this model's img_size "
                                 f"{self.config.img_size} needs {ours}x{ours}: EfficientFormer's attention biases are "
                                 "not resampled, build it with the checkpoint's img_size (224 for timm's)")
        return state_dict
