"""BEiT (Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022), the network of timm's
`Beit` (timm/models/beit.py) with timm's parameter names, so timm weights load as they are.

A ViT with: a class token; a learned relative position bias per block (a table of (2G-1)^2 + 3 rows per
head, G the patch grid side, the 3 extra rows for class-to-patch, patch-to-class and class-to-class,
looked up through `relative_position_index`, a buffer outside the state dict as in timm) or one shared
by all blocks; q and v biases without a k bias; LayerScale (`gamma_1`, `gamma_2`); mean pooling of the
patch tokens followed by `fc_norm` (the named models), no final norm then.

Differences from timm: attention runs on torch's fused `scaled_dot_product_attention` with the relative
position bias as its float `attn_mask` (timm's default path too; an ONNX export writes it out explicitly,
see `BeitAttention.attend`); the q/v biases are added after the qkv projection (timm's
`qkv_bias_separate` path: equal within float rounding, and int8 can swap the linear); the attention module
is vitkit's `Attention` (so `capture_attention` and gradient relevance work) and refuses a token count
other than the bias's grid (masked pretraining that drops tokens) with a clear error; `blocks` is an
`nn.Sequential` (timm: `nn.ModuleList`; same keys); the norms' epsilon is `norm_eps` (timm's
`norm_layer`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import Attention, DropPath, Mlp, PatchEmbed, apply_linear, resample_abs_pos_embed
from .._features import (
    adapt_stem_channels,
    check_output_fmt,
    init_linear_,
    layout_token_intermediates,
    run_block,
    run_blocks,
    take_indices,
)
from .._protocol import FeatureInfo, InputSpec, with_pretrained_cfg
from .configs import BEIT_MEAN_STD, BeitConfig


def relative_position_index(grid: int) -> torch.Tensor:
    """(G*G + 1, G*G + 1) indices into a table of (2G-1)^2 + 3 rows: patch pairs by their (dy, dx) offset,
    then class-to-patch, patch-to-class and class-to-class (timm's `gen_relative_position_index`)."""
    num_distances = (2 * grid - 1) ** 2 + 3
    coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).flatten(1)
    offsets = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (grid - 1)  # (G*G, G*G, 2), >= 0
    index = torch.zeros(grid * grid + 1, grid * grid + 1, dtype=torch.long)
    index[1:, 1:] = offsets[..., 0] * (2 * grid - 1) + offsets[..., 1]
    index[0, :] = num_distances - 3
    index[:, 0] = num_distances - 2
    index[0, 0] = num_distances - 1
    return index


def inference_cached(module: nn.Module, key: str, parts: tuple[torch.Tensor, ...], build):
    """`build()`, kept on `module` and reused while no gradient is recorded and `parts` (the parameters it is
    made of) are unchanged (same storage, same version counter), so that inference does not redo per call what
    depends on the weights only (the relative position bias lookup, the q/v bias concatenation). Training,
    tracing, compiling and exporting always build afresh. Writes through `.data` bypass the version counter:
    the holders clear their cache on `.to()` / `.half()` (`_apply`) and leave it out of pickles and copies."""
    if (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()
            or not all(type(p) in (nn.Parameter, torch.Tensor) and not p.is_inference() for p in parts)):
        return build()  # inference tensors have no version counter; wrapped ones (vmap, FX) no storage
    stamp = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in parts)
    cache = module.__dict__.setdefault("_inference_cache", {})
    hit = cache.get(key)
    if hit is None or hit[0] != stamp:
        hit = cache[key] = (stamp, build())
    return hit[1]


def lookup_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(1, heads, N, N) attention bias from a (distances, heads) table and an (N, N) index."""
    n = index.shape[0]
    return table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)


def resize_rel_pos_bias_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """A (2g-1)^2 + 3 row table (from weights for another image size) to this grid's (2G-1)^2 + 3 rows:
    the offset part resampled bicubically, the three class-token rows kept."""
    old = math.isqrt(table.shape[0] - 3)
    if old * old != table.shape[0] - 3:
        raise ValueError(f"relative position bias table of {table.shape[0]} rows is not (2G-1)^2 + 3 for any grid")
    new = 2 * grid - 1
    offsets = table[:-3].T.reshape(1, -1, old, old).float()
    offsets = F.interpolate(offsets, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([offsets.reshape(-1, new * new).T.to(table.dtype), table[-3:]])


class InferenceCacheHolder(nn.Module):
    """A module that keeps `inference_cached` results: cleared when its tensors move or change dtype, left out
    of pickles and deep copies."""

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_inference_cache", None)
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_inference_cache", None)
        return state


class RelativePositionBias(InferenceCacheHolder):
    """One relative position bias table for all blocks (`use_shared_rel_pos_bias`, timm's names)."""

    def __init__(self, grid: int, num_heads: int):
        super().__init__()
        self.grid = grid
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * grid - 1) ** 2 + 3, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(grid), persistent=False)

    def forward(self) -> torch.Tensor:
        table = self.relative_position_bias_table
        index = self.relative_position_index
        return inference_cached(self, "bias", (table, index), lambda: lookup_bias(table, index))


class BeitAttention(InferenceCacheHolder, Attention):
    """vitkit's fused `Attention` (its `on_attention` hook and `attention_grad` mode included) with BEiT's
    q/v biases (the k bias is always zero, and no parameter) and an optional relative position bias table
    for a `grid` x `grid` patch grid plus the class token."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, grid: int | None = None):
        super().__init__(dim, num_heads, qkv_bias=False, attn_drop=attn_drop, proj_drop=proj_drop)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.grid = grid
        if grid:
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * grid - 1) ** 2 + 3, num_heads))
            self.register_buffer("relative_position_index", relative_position_index(grid), persistent=False)
        else:
            self.relative_position_bias_table = None

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        # the q/v bias inside the matmul (as transformers' separate q/k/v layers), after a replaced module (int8)
        qkv = apply_linear(x, self.qkv, bias=None if self.q_bias is None else self.qkv_bias())
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """The fused attention of vitkit's `Attention`, except in an ONNX export: there torch 2.13 fails to
        decompose the fused kernel with a bias computed in the graph (a view of a non-viewable output), so the
        export writes the explicit softmax(q k^T * scale + bias) @ v, equal within float tolerance."""
        if attn_bias is None or self.attention_grad or not torch.onnx.is_in_onnx_export():
            return super().attend(q, k, v, attn_bias)
        return self.project_out(self.attention_weights(q, k, attn_bias.to(q.dtype)) @ v)

    def qkv_bias(self) -> torch.Tensor:
        """q bias, zeros for k, v bias: one bias for the fused qkv projection."""
        q, v = self.q_bias, self.v_bias
        return inference_cached(self, "qkv_bias", (q, v), lambda: torch.cat((q, torch.zeros_like(q), v)))

    def position_bias(self) -> torch.Tensor | None:
        table = self.relative_position_bias_table
        if table is None:
            return None
        index = self.relative_position_index
        return inference_cached(self, "bias", (table, index), lambda: lookup_bias(table, index))

    def relative_bias(self, shared_rel_pos_bias: torch.Tensor | None, tokens: int) -> torch.Tensor | None:
        """This block's relative position bias plus the model's shared one (either may be None) for a sequence
        that starts with `tokens` tokens; another count than the bias covers is refused."""
        bias = self.position_bias()
        if shared_rel_pos_bias is not None:
            bias = shared_rel_pos_bias if bias is None else bias + shared_rel_pos_bias
        if bias is not None and bias.shape[-1] != tokens:
            raise ValueError(f"BEiT's relative position bias covers {bias.shape[-1]} tokens (class token + its patch "
                             f"grid), got {tokens}: it cannot run with tokens dropped or merged")
        return bias

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(*self.project_qkv(x), self.relative_bias(shared_rel_pos_bias, x.shape[1]))


class BeitBlock(nn.Module):
    """Pre-norm transformer block with LayerScale as timm's `gamma_1` / `gamma_2` parameters."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, mlp_ratio: float, proj_drop: float,
                 attn_drop: float, drop_path: float, init_values: float | None, grid: int | None, norm_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = BeitAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop, grid)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), nn.GELU, proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if init_values:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        y = self.attn(self.norm1(x), shared_rel_pos_bias)
        x = self._residual(x, y, self.gamma_1, self.drop_path1)
        y = self.mlp(self.norm2(x))
        return self._residual(x, y, self.gamma_2, self.drop_path2)

    def _residual(self, x: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor | None, drop_path: nn.Module):
        """x + drop_path(gamma * y), the LayerScale product and the sum in one pass where drop path is off."""
        if gamma is None:
            return x + drop_path(y)
        if isinstance(drop_path, nn.Identity) or not self.training:
            return torch.addcmul(x, gamma, y)
        return x + drop_path(gamma * y)


class Beit(nn.Module):
    architecture = "beit"

    def __init__(self, config: BeitConfig):
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        self.global_pool = c.global_pool
        self.num_features = self.embed_dim = c.embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim,
                                      dynamic_img_size=not c.fixed_size)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, c.embed_dim)) if c.use_abs_pos_emb else None
        self.pos_drop = nn.Dropout(c.pos_drop_rate)
        self.rel_pos_bias = RelativePositionBias(grid, c.num_heads) if c.use_shared_rel_pos_bias else None
        drop_path_rates = [c.drop_path_rate * i / max(c.depth - 1, 1) for i in range(c.depth)]  # linear in depth
        self.blocks = nn.Sequential(*[
            BeitBlock(c.embed_dim, c.num_heads, c.qkv_bias, c.mlp_ratio, c.proj_drop_rate, c.attn_drop_rate, dpr,
                      c.init_values, grid if c.use_rel_pos_bias else None, c.norm_eps)
            for dpr in drop_path_rates
        ])
        self.norm = nn.Identity() if c.use_fc_norm else nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.fc_norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps) if c.use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = nn.Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.feature_info = [FeatureInfo(c.embed_dim, c.patch_size, f"blocks.{i}") for i in range(c.depth)]
        self.init_weights()

    @property
    def input_spec(self) -> InputSpec:
        """Fixed size when the model has a relative position bias or an absolute position embedding (both
        cover one patch grid; `create_model(..., img_size=...)` with weights resamples them); any multiple of
        the patch size otherwise. BEiT's weights normalise with mean = std = 0.5."""
        c = self.config
        spec = InputSpec(in_chans=c.in_chans, img_size=(c.img_size, c.img_size), fixed_size=c.fixed_size,
                         size_multiple=c.patch_size, mean=BEIT_MEAN_STD[:1] * c.in_chans,
                         std=BEIT_MEAN_STD[:1] * c.in_chans, crop_pct=0.9)
        return with_pretrained_cfg(spec, self)

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's BEiT init: truncated normal(0.02) linears, the attention and MLP output projections of block
        i divided by sqrt(2 (i + 1)), the head scaled by `head_init_scale`; bias tables and q/v biases zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for i, block in enumerate(self.blocks):
            block.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))
        if self.config.head_init_scale and isinstance(self.head, nn.Linear):
            self.head.weight.mul_(self.config.head_init_scale)
            self.head.bias.mul_(self.config.head_init_scale)

    # ----- embedding -------------------------------------------------------------------------
    def patch_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The patch grid (h, w) of images `x` (B, C, H, W)."""
        p = self.config.patch_size
        if self.config.fixed_size:
            return (self.patch_embed.grid_size,) * 2
        return x.shape[-2] // p, x.shape[-1] // p

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) to the token sequence the first block sees: class token, then patches."""
        x = self.patch_embed(x.to(self.cls_token.dtype))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    # ----- timm's model API ------------------------------------------------------------------
    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """A token sequence (from `embed`) through the blocks and the final norm. The relative position bias
        needs every patch token: sequences with tokens left out are refused (token merging and pruning inside
        the blocks go through `vitkit.efficiency`'s BEiT adapter, which reduces the bias with the tokens)."""
        shared = self.rel_pos_bias() if self.rel_pos_bias is not None else None
        for block in self.blocks:
            x = run_block(self, block, x, shared)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(self.embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool:
            x = x[:, 0]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        stop_early: bool = False,
    ):
        """Outputs of chosen blocks, as timm returns them: `indices` an int n (the last n blocks), a list
        (negatives count from the end) or None (all); "NCHW" maps or "NLC" patch tokens, the class token
        beside them with `return_prefix_tokens`."""
        check_output_fmt(output_fmt)
        grid_h, grid_w = self.patch_grid(x)
        x = self.embed(x)
        shared = self.rel_pos_bias() if self.rel_pos_bias is not None else None
        x, intermediates = run_blocks(self.blocks, x, indices, lambda block, x: run_block(self, block, x, shared),
                                     self.norm, norm, stop_early or intermediates_only)
        intermediates = layout_token_intermediates(intermediates, self.num_prefix_tokens, (grid_h, grid_w), output_fmt,
                                                   return_prefix_tokens)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop blocks after the last one `indices` needs (and the norm / head) to save compute."""
        take, last = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, "")
        return sorted(take)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for `num_classes` (0: none), optionally another pooling. The norms stay as built (the
        config records which, `fc_norm`), so a saved model rebuilds with the same layers."""
        if global_pool is not None:
            BeitConfig.check_pool(global_pool)
            self.config.fc_norm = self.config.use_fc_norm
            self.global_pool = self.config.global_pool = global_pool
        self.num_classes = self.config.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        init_linear_(self.head)

    def get_classifier(self) -> nn.Module:
        return self.head

    def no_weight_decay(self) -> set[str]:
        tables = {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}
        return {"pos_embed", "cls_token"} | tables

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's groups: the embedding (and a shared bias table), each block, the final norm with the last
        block; fc_norm and the head after."""
        return {"stem": r"^cls_token|^pos_embed|^patch_embed|^rel_pos_bias",
                "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (training only)."""
        self.grad_checkpointing = enable

    # ----- checkpoint adaptation -------------------------------------------------------------
    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fit weights to this model: Hugging Face names converted, saved `relative_position_index` /
        `k_bias` buffers (original BEiT and older timm checkpoints) dropped, the position embedding and the
        bias tables resampled to another image size, the patch projection refitted to another channel count."""
        from .convert import from_hf_state_dict, is_hf_state_dict

        state_dict = from_hf_state_dict(state_dict) if is_hf_state_dict(state_dict) else dict(state_dict)
        state_dict = {k: v for k, v in state_dict.items()
                      if k.rsplit(".", 1)[-1] not in ("relative_position_index", "k_bias")}
        grid = self.patch_embed.grid_size
        pos = state_dict.get("pos_embed")
        if self.pos_embed is not None and pos is not None and pos.shape != self.pos_embed.shape \
                and pos.shape[-1] == self.embed_dim:
            state_dict["pos_embed"] = resample_abs_pos_embed(pos, grid, self.num_prefix_tokens)
        own = dict(self.named_parameters())
        for key, value in state_dict.items():
            if key.endswith("relative_position_bias_table") and key in own and value.ndim == 2 \
                    and value.shape != own[key].shape and value.shape[1] == own[key].shape[1]:
                state_dict[key] = resize_rel_pos_bias_table(value, grid)
        adapt_stem_channels(state_dict, "patch_embed.proj.weight", self.patch_embed.proj.weight)
        return state_dict
