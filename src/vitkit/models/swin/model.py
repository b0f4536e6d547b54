"""Swin Transformer V1 with timm's (>= 0.9) module and parameter names, so timm weights load unchanged.

Activations stay NHWC (B, H, W, C) between stages, as in timm. Stage i > 0 starts with a PatchMerging
(`layers.i.downsample`); each block attends inside non-overlapping windows, every second block with the
windows shifted by half a window (a cyclic roll plus an attention mask keeps the wrapped-around
regions apart).

Any input size works whose stage grids the (built) windows divide: the shift masks are made for the grid
seen at forward time. `SwinTransformer.size_multiple()` is that multiple; other sizes are refused with it.
"""

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import ACT_LAYERS, DropPath, Mlp, apply_linear
from .._features import StagedModelMixin, adapt_stem_channels, forward_blocks, init_linear_, run_blocks
from .._protocol import FeatureInfo, InputSpec, with_pretrained_cfg

if TYPE_CHECKING:  # configs.py imports this module to register the architecture
    from .configs import SwinConfig


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * num_windows, window * window, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)


def window_reverse(windows: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """(B * num_windows, window * window, C) -> (B, H, W, C); the inverse of `window_partition`."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def relative_position_index(window: int) -> torch.Tensor:
    """For each (query, key) pair in a window, its row in the (2w-1)^2 relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


def shifted_window_mask(H: int, W: int, window: int, shift: int) -> torch.Tensor:
    """(num_windows, N, N) additive mask: -100 between tokens that the cyclic shift brought from different
    image regions into one window (timm's and the paper's value)."""
    img = torch.zeros(1, H, W, 1)
    regions = ((0, -window), (-window, -shift), (-shift, None))
    for n, (h, w) in enumerate((h, w) for h in regions for w in regions):
        img[:, h[0]:h[1], w[0]:w[1], :] = n
    ids = window_partition(img, window).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, plus a learned bias per relative offset and head.

    `on_attention` (the attention-map capability `vitkit.capture_attention` looks for) is an optional
    callback. When set, it receives this call's attention probabilities per image and window,
    (B, num_windows, heads, N, N) with N = window * window: softmax(q k^T * scale + relative position
    bias [+ shift mask]). Windows are numbered row-major over the stage grid (window row * windows per
    row + window column); in a shifted block they are the windows of the grid cyclically rolled by
    -shift in both directions, i.e. in the shifted frame, not the image's. The probabilities are computed
    beside the fused kernel, so outputs do not change and nothing is paid while nobody listens."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None, window: int, qkv_bias: bool,
                 attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads, self.window = num_heads, window
        attn_dim = (head_dim or dim // num_heads) * num_heads
        self.scale = (attn_dim // num_heads) ** -0.5  # scaled_dot_product_attention's default
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # derived from the window size, so (like timm >= 0.9) not saved with the weights
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, attn_dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(attn_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.on_attention: Callable[[torch.Tensor], None] | None = None

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, N, N): the table's entry for every (query, key) offset in a window."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, num_windows: int | None = None
                ) -> torch.Tensor:
        """`x`: (B * num_windows, N, C) windows, image-major as `window_partition` gives them; `mask`:
        (num_windows, N, N) additive shift mask or None. `num_windows` (default: the mask's count, else 1)
        only groups what `on_attention` receives per image."""
        B_, N, _ = x.shape
        q, k, v = apply_linear(x, self.qkv).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias().unsqueeze(0)  # (1, heads, N, N)
        if mask is not None:  # (num_windows, N, N), repeated over the batch
            nw = mask.shape[0]
            bias = (bias.unsqueeze(0) + mask.view(1, nw, 1, N, N)).expand(B_ // nw, -1, -1, -1, -1)
            bias = bias.reshape(B_, self.num_heads, N, N)
        bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        if self.on_attention is not None:
            windows = num_windows or (mask.shape[0] if mask is not None else 1)
            self.on_attention(self.attention_probs(q, k, bias).view(B_ // windows, windows, self.num_heads, N, N))
        return self.proj_drop(apply_linear(out.transpose(1, 2).reshape(B_, N, -1), self.proj))

    def attention_probs(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(B * num_windows, heads, N, N) probabilities, computed apart from the fused kernel."""
        return ((q * self.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1).detach()


class SwinTransformerBlock(nn.Module):
    """Window attention (every second block shifted by half a window) and an MLP, both residual.

    The shift mask depends on the grid, so it is built for the grid actually seen at forward time and
    cached per (H, W, device, dtype) outside the state dict; window and shift stay as built (timm's rule:
    a window that covers its whole stage at the built size shrinks to that grid and is never shifted)."""

    MAX_CACHED_MASKS = 8  # a handful of input sizes; beyond that, start over rather than grow without bound

    def __init__(self, c: "SwinConfig", dim: int, num_heads: int, window: int, shift: int, drop_path: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, c.head_dim, window, c.qkv_bias, c.attn_drop_rate,
                                    c.proj_drop_rate)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * c.mlp_ratio), ACT_LAYERS[c.act_layer], c.proj_drop_rate)
        self.drop_path2 = DropPath(drop_path)
        self._masks: dict[tuple, torch.Tensor] = {}

    def attn_mask(self, H: int, W: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """The shift mask for an H x W grid (None for an unshifted block). Not cached while tracing or
        compiling (torch.export, ONNX, torch.compile): a cached fake or traced tensor would leak into
        later eager calls, and there the mask is a constant of the graph anyway."""
        if not self.shift:
            return None
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return shifted_window_mask(H, W, self.window, self.shift).to(device=device, dtype=dtype)
        key = (H, W, device, dtype)
        mask = self._masks.get(key)
        if mask is None:
            if len(self._masks) >= self.MAX_CACHED_MASKS:
                self._masks.clear()
            mask = self._masks[key] = shifted_window_mask(H, W, self.window, self.shift).to(device=device,
                                                                                            dtype=dtype)
        return mask

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        mask = self.attn_mask(H, W, x.device, x.dtype)
        x = self.attn(window_partition(x, self.window), mask=mask, num_windows=(H // self.window) * (W // self.window))
        x = window_reverse(x, self.window, H, W)
        return torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2)) if self.shift else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens -> one token with twice the channels (concatenate, norm, linear)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        # timm's channel order: (0,0), (1,0), (0,1), (1,1) offsets, as the original concatenation
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinTransformerStage(nn.Module):
    """Patch merging (from stage 1 on), then blocks alternating plain and shifted windows.

    `window` and `shift` are fixed when the model is built, from the built grid (`resolution`): the
    relative position bias table is sized for the window, and timm keeps them when the input size
    changes. `reduction` is input pixels per grid cell, so an input side must be a multiple of
    reduction * window."""

    def __init__(self, c: "SwinConfig", i: int, resolution: int, window: int, drop_paths: list[float]):
        super().__init__()
        dim, in_dim = c.embed_dims[i], c.embed_dims[max(i - 1, 0)]
        self.window, self.reduction = window, c.patch_size * 2**i
        self.downsample = PatchMerging(in_dim, dim) if i > 0 else nn.Identity()
        shift = window // 2 if resolution > window else 0  # one window covers the stage: nothing to shift
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(c, dim, c.num_heads[i], window, shift if j % 2 else 0, dp)
            for j, dp in enumerate(drop_paths)
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return forward_blocks(self, x)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection, then LayerNorm, giving NHWC maps."""

    def __init__(self, c: "SwinConfig"):
        super().__init__()
        self.patch_size = c.patch_size
        self.proj = nn.Conv2d(c.in_chans, c.embed_dims[0], c.patch_size, stride=c.patch_size)
        self.norm = nn.LayerNorm(c.embed_dims[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Refuses what the convolution would silently crop: a border narrower than a patch."""
        if x.ndim != 4:
            raise ValueError(f"Swin expects images of shape (B, C, H, W), got shape {tuple(x.shape)}")
        H, W, p = x.shape[-2], x.shape[-1], self.patch_size
        if H % p or W % p:
            raise ValueError(f"input {H}x{W} is not divisible by the patch size {p} (Swin's patch embedding "
                             f"takes non-overlapping {p}x{p} patches and would drop the remainder)")
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ClassifierHead(nn.Module):
    """timm's ClassifierHead for NHWC input: pool over H, W, dropout, `fc`."""

    def __init__(self, dim: int, num_classes: int, pool_type: str, drop: float):
        super().__init__()
        self.pool_type = pool_type
        self.drop = nn.Dropout(drop)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "avg":
            x = x.mean(dim=(1, 2))
        elif self.pool_type == "max":
            x = x.amax(dim=(1, 2))
        elif self.pool_type == "avgmax":
            x = 0.5 * (x.mean(dim=(1, 2)) + x.amax(dim=(1, 2)))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


def _sizes_around(H: int, W: int, multiple: int) -> str:
    """The valid sizes just below and above H x W, for an error message."""
    below = [max(multiple, side // multiple * multiple) for side in (H, W)]
    above = [-(-side // multiple) * multiple for side in (H, W)]
    sizes = dict.fromkeys(f"{h}x{w}" for h, w in (below, above))  # one when the input is below the multiple
    return " or ".join(sizes)


class SwinTransformer(StagedModelMixin, nn.Module):
    """timm's `SwinTransformer`: patch embedding, NHWC stages, final norm, pooled linear head.

    Built for `config.img_size`, it runs at any size `size_multiple()` divides (timm's
    `strict_img_size=False`, transformers' Swin without padding). Pruning, head reset and gradient
    checkpointing come from `StagedModelMixin`."""

    architecture = "swin"
    stages_attr, final_norm_attr = "layers", "norm"

    def __init__(self, config: "SwinConfig"):
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        self.num_features = c.embed_dims[-1]
        self.patch_embed = PatchEmbed(c)
        n = sum(c.depths)
        rates = [c.drop_path_rate * j / max(n - 1, 1) for j in range(n)]  # linear in depth, as timm
        stages, start = [], 0
        for i, (res, window) in enumerate(zip(c.stage_resolutions(), c.stage_windows(), strict=True)):
            stages.append(SwinTransformerStage(c, i, res, window, rates[start:start + c.depths[i]]))
            start += c.depths[i]
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, c.num_classes, c.global_pool, c.drop_rate)
        self.feature_info = [FeatureInfo(dim, c.patch_size * 2**i, f"layers.{i}") for i, dim in enumerate(c.embed_dims)]
        self.init_weights()

    @property
    def input_spec(self) -> InputSpec:
        """Evaluated at the built img_size; other sizes work when they are multiples of `size_multiple()`."""
        c = self.config
        spec = InputSpec(in_chans=c.in_chans, img_size=(c.img_size, c.img_size), fixed_size=False,
                         size_multiple=self.size_multiple(), crop_pct=0.9)
        return with_pretrained_cfg(spec, self)

    def size_multiple(self) -> int:
        """The sides that work: stage i's grid (side / (patch_size * 2**i)) must be a whole number that
        its window divides, so a side must be a multiple of patch_size * 2**i * window_i for every stage
        kept; the least common multiple of those. Windows are the built (possibly clamped) ones, so this
        can be smaller than `config.size_multiple()`."""
        return math.lcm(*(stage.reduction * stage.window for stage in self.layers))

    def check_input_size(self, H: int, W: int) -> None:
        """One clear error, before any compute, for a size the patches, patch mergings or windows do not
        divide (they would otherwise fail deep inside with a reshape error, or crop silently)."""
        m = self.size_multiple()
        hint = f"use a multiple of {m} per side (e.g. {_sizes_around(H, W, m)})"
        p = self.patch_embed.patch_size
        if H % p or W % p:
            raise ValueError(f"input {H}x{W} is not divisible by the patch size {p}; {hint}")
        for i, stage in enumerate(self.layers):
            r = stage.reduction
            if H % r or W % r:
                raise ValueError(f"input {H}x{W}: stage {i - 1} grid {H // (r // 2)}x{W // (r // 2)} has an odd "
                                 f"side, which patch merging cannot halve for stage {i}; {hint}")
            if (H // r) % stage.window or (W // r) % stage.window:
                raise ValueError(f"input {H}x{W}: stage {i} grid {H // r}x{W // r} is not divisible by window "
                                 f"{stage.window}; {hint}")

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's default: truncated normal(0.02) for linears and relative position bias tables, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, WindowAttention):
                nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            self.check_input_size(x.shape[-2], x.shape[-1])
        return self.patch_embed(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers(self._embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False, stop_early: bool = False):
        """Stage outputs as timm returns them: NCHW maps (or NHWC), the final norm applied to the last stage
        only when `norm`; `indices` as in ViT (int n = last n stages, list = those stages, None = all)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        x, intermediates = run_blocks(self.layers, self._embed(x), indices, lambda stage, x: stage(x), self.norm,
                                      norm, stop_early or intermediates_only, last_only=True)
        if output_fmt == "NCHW":
            intermediates = [y.permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def _reset_head(self, num_classes: int, global_pool: str | None) -> None:
        c = self.config
        if global_pool is not None:
            c.check_pool(global_pool)
        pool = c.global_pool if global_pool is None else global_pool
        self.head = ClassifierHead(self.num_features, num_classes, pool, c.drop_rate)
        init_linear_(self.head.fc)

    def no_weight_decay(self) -> set[str]:
        """timm's `no_weight_decay_keywords`: every relative position bias table (no absolute embedding here)."""
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's groups: the patch embedding, then per stage (coarse) or per block, with each patch merging
        grouped before its stage's blocks and the final norm last; the head after."""
        blocks = r"^layers\.(\d+)" if coarse else [
            (r"^layers\.(\d+).downsample", (0,)), (r"^layers\.(\d+)\.\w+\.(\d+)", None), (r"^norm", (99999,))
        ]
        return {"stem": r"^patch_embed", "blocks": blocks}

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Older timm layouts (patch merging at the end of a stage, saved buffers) and other channel counts."""
        from .convert import from_old_timm

        state_dict = from_old_timm(state_dict)
        adapt_stem_channels(state_dict, "patch_embed.proj.weight", self.patch_embed.proj.weight)
        return state_dict
