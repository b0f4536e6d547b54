"""Vision Transformer (ViT) and DeiT, with timm's parameter names so timm weights load as they are.

Token layout: [class token][distillation token][register tokens][patch tokens].
"""

from dataclasses import dataclass

import torch
from torch import nn

from ...layers import (
    ACT_LAYERS,
    POOL_TYPES,
    AttentionPoolLatent,
    Block,
    ConvStem,
    Mlp,
    PatchEmbed,
    SwiGLUPacked,
    pool_tokens,
    resample_abs_pos_embed,
)
from ...layers.pos_embed import POS_EMBED_INTERP
from .._features import (
    adapt_stem_channels,
    check_output_fmt,
    forward_blocks,
    init_linear_,
    layout_token_intermediates,
    run_blocks,
    take_indices,
)
from .._protocol import FeatureInfo, InputSpec, with_pretrained_cfg

# timm's `mlp_layer` classes, by name: "mlp" (fc1 -> act -> fc2) and "swiglu_packed" (DINOv2 giant: one
# packed fc1 holding value and gate, SiLU on the first half; pass act_layer="silu").
MLP_LAYERS = {"mlp": Mlp, "swiglu_packed": SwiGLUPacked}
VIT_POOL_TYPES = (*POOL_TYPES, "map")  # "map": attention pooling with a learned query (SigLIP)


@dataclass
class ViTConfig:
    """Constructor arguments, named and defaulted like timm's `VisionTransformer` (ViT-B/16).

    `pos_embed_interp` (vitkit's, timm has no such argument) is how `dynamic_img_size` resamples the position
    embedding to an input's patch grid, so that a converted checkpoint runs other sizes as its source does:
      "timm": bicubic with antialias, in float32 (timm; also transformers' `Dinov2WithRegistersModel`);
      "bicubic": bicubic without antialias, in float32 (transformers' `Dinov2Model`);
      "bicubic_model_dtype": bicubic without antialias, in the embedding's own dtype (transformers' CLIP and
        SigLIP vision towers called with `interpolate_pos_encoding=True`; equal to "bicubic" in float32).
    The ways differ by tenths on a unit-scale embedding, when upsampling too. Weights loaded for
    another `img_size` are resampled once, bicubic without antialias, whatever this says.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    conv_stem: tuple[int, ...] = ()  # channels of 3x3 conv stages replacing the patch projection
    conv_stem_strides: tuple[int, ...] = ()  # 1 or 2 per stage; default all 2
    num_classes: int = 1000
    global_pool: str = "token"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_norm: bool = False
    init_values: float | None = None
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False
    pre_norm: bool = False
    final_norm: bool = True
    fc_norm: bool | None = None
    distilled: bool = False
    act_layer: str = "gelu"
    mlp_layer: str = "mlp"
    dynamic_img_size: bool = False  # interpolate the position embedding to each input's patch grid
    pos_embed_interp: str = "timm"  # how dynamic_img_size interpolates: a key of POS_EMBED_INTERP (above)
    norm_eps: float = 1e-6
    gem_p: float = 3.0
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self):
        self.conv_stem = tuple(int(c) for c in self.conv_stem)
        self.conv_stem_strides = tuple(int(s) for s in self.conv_stem_strides) or (2,) * len(self.conv_stem)
        if self.conv_stem:
            self.patch_size = 2 ** self.conv_stem_strides.count(2)  # the stem's total stride; odd sizes round up
        if self.global_pool not in VIT_POOL_TYPES:
            raise ValueError(f"global_pool={self.global_pool!r} is not one of {VIT_POOL_TYPES}")
        if self.mlp_layer not in MLP_LAYERS:
            raise ValueError(f"mlp_layer={self.mlp_layer!r} is not one of {sorted(MLP_LAYERS)}")
        if not isinstance(self.pos_embed_interp, str) or self.pos_embed_interp not in POS_EMBED_INTERP:
            raise ValueError(f"pos_embed_interp={self.pos_embed_interp!r} is not one of {sorted(POS_EMBED_INTERP)}")
        if self.global_pool == "map" and self.distilled:
            raise ValueError("global_pool='map' (attention pooling) does not go with a distillation head")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg' without one")
        if self.distilled and not self.class_token:
            raise ValueError("a distilled model (distillation token) needs class_token=True")
        if self.act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer={self.act_layer!r} is not one of {sorted(ACT_LAYERS)}")
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.img_size % self.patch_size and not self.conv_stem:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")


class VisionTransformer(nn.Module):
    architecture = "vit"

    def __init__(self, config: ViTConfig):
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        self.global_pool = c.global_pool
        self.num_features = self.embed_dim = c.embed_dim
        self.num_prefix_tokens = int(c.class_token) + int(c.distilled) + c.reg_tokens
        self.no_embed_class = c.no_embed_class
        self.distilled_training = False  # distilled models return (cls, dist) logits while this is set
        self.grad_checkpointing = False

        self.patch_embed = (
            ConvStem(c.img_size, c.in_chans, c.embed_dim, c.conv_stem, c.conv_stem_strides,
                     dynamic_img_size=c.dynamic_img_size) if c.conv_stem
            else PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim, bias=not c.pre_norm,
                            dynamic_img_size=c.dynamic_img_size)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.distilled else None
        self.reg_token = nn.Parameter(torch.zeros(1, c.reg_tokens, c.embed_dim)) if c.reg_tokens else None
        num_patches = self.patch_embed.num_patches
        embed_len = num_patches if c.no_embed_class else num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, c.embed_dim))
        self.pos_drop = nn.Dropout(c.pos_drop_rate)
        self.norm_pre = self._norm() if c.pre_norm else nn.Identity()

        drop_path_rates = [c.drop_path_rate * i / max(c.depth - 1, 1) for i in range(c.depth)]  # linear in depth
        self.blocks = nn.Sequential(*[
            Block(
                c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, c.qk_norm, c.init_values,
                c.proj_drop_rate, c.attn_drop_rate, dpr, c.norm_eps, ACT_LAYERS[c.act_layer], MLP_LAYERS[c.mlp_layer],
            )
            for dpr in drop_path_rates
        ])
        use_fc_norm = c.global_pool in ("avg", "max", "avgmax", "gem") if c.fc_norm is None else c.fc_norm
        self.norm = self._norm() if c.final_norm and not use_fc_norm else nn.Identity()
        self.fc_norm = self._norm() if c.final_norm and use_fc_norm else nn.Identity()
        self.attn_pool = self._attn_pool() if c.global_pool == "map" else None
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = self._linear_head(c.num_classes)
        self.head_dist = self._linear_head(c.num_classes) if c.distilled else None
        reduction = c.patch_size if not c.conv_stem else 2 ** c.conv_stem_strides.count(2)
        self.feature_info = [FeatureInfo(c.embed_dim, reduction, f"blocks.{i}") for i in range(c.depth)]
        self.init_weights()

    @property
    def input_spec(self) -> InputSpec:
        """Fixed size: the absolute position embedding covers one grid (`vitkit.load(dir, img_size=...)`
        or `create_model(..., img_size=...)` resamples it for another)."""
        c = self.config
        spec = InputSpec(in_chans=c.in_chans, img_size=(c.img_size, c.img_size), fixed_size=not c.dynamic_img_size,
                         size_multiple=self.feature_info[0].reduction, crop_pct=0.9)
        return with_pretrained_cfg(spec, self)

    def _norm(self) -> nn.LayerNorm:
        return nn.LayerNorm(self.embed_dim, eps=self.config.norm_eps)

    def _attn_pool(self) -> AttentionPoolLatent:
        c = self.config
        return AttentionPoolLatent(c.embed_dim, c.num_heads, c.mlp_ratio, norm_eps=c.norm_eps,
                                   act_layer=ACT_LAYERS[c.act_layer])

    def _linear_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's default ViT init: truncated normal(0.02) for linears and position embedding."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token, std in ((self.cls_token, 1e-6), (self.reg_token, 1e-6), (self.dist_token, 0.02)):
            if token is not None:
                nn.init.normal_(token, std=std)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.attn_pool is not None:
            self.attn_pool.init_weights()

    # ----- embedding -------------------------------------------------------------------------
    def prefix_tokens(self, batch_size: int) -> list[torch.Tensor]:
        tokens = [self.cls_token, self.dist_token, self.reg_token]
        return [t.expand(batch_size, -1, -1) for t in tokens if t is not None]

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Add position embeddings to patch tokens and prepend the prefix tokens; `grid` (h, w) is the
        input's patch grid, to which the embedding is interpolated when it differs (dynamic_img_size)."""
        prefix = self.prefix_tokens(x.shape[0])
        pos_embed = self.pos_embed
        if grid is not None and tuple(grid) != (self.patch_embed.grid_size,) * 2:
            in_pos = 0 if self.no_embed_class else self.num_prefix_tokens
            pos_embed = POS_EMBED_INTERP[self.config.pos_embed_interp](pos_embed, grid, in_pos)
        if self.no_embed_class:
            x = torch.cat([*prefix, x + pos_embed], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos_embed
        return self.pos_drop(x)

    def patch_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The patch grid (h, w) of images `x` (B, C, H, W)."""
        if not self.config.dynamic_img_size:
            return (self.patch_embed.grid_size,) * 2
        if self.config.conv_stem:
            return self.patch_embed.output_grid(x.shape[-2], x.shape[-1])
        p = self.patch_embed.patch_size
        return x.shape[-2] // p, x.shape[-1] // p

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) to the token sequence the first block sees."""
        x = x.to(self.pos_embed.dtype)  # float32 images into a bf16 model
        grid = self.patch_grid(x) if self.config.dynamic_img_size else None
        return self.norm_pre(self._pos_embed(self.patch_embed(x), grid))

    # ----- timm's model API ------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(self.embed(x))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """A token sequence (from `embed`, possibly with patch tokens left out: masked pretraining) through
        the blocks and the final norm."""
        return self.norm(forward_blocks(self, x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        if self.head_dist is not None:
            cls, dist = x[:, 0], x[:, 1]
            if pre_logits:
                return (cls + dist) / 2
            cls, dist = self.head(cls), self.head_dist(dist)
            if self.distilled_training and self.training:
                return cls, dist
            return (cls + dist) / 2
        if self.attn_pool is not None:
            x = self.attn_pool(x)
        else:
            x = pool_tokens(x, self.global_pool, self.num_prefix_tokens, self.config.gem_p)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor):
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
        """Outputs of chosen blocks, as timm returns them.

        `indices`: an int n takes the last n blocks, a list takes those blocks (negatives count from
        the end), None takes all. `output_fmt`: "NCHW" maps or "NLC" tokens (patch tokens only;
        prefix tokens come back beside them with `return_prefix_tokens`).
        """
        check_output_fmt(output_fmt)
        grid_h, grid_w = self.patch_grid(x)
        x = self.embed(x)
        x, intermediates = run_blocks(self.blocks, x, indices, lambda block, x: block(x), self.norm, norm,
                                     stop_early or intermediates_only)
        intermediates = layout_token_intermediates(intermediates, self.num_prefix_tokens, (grid_h, grid_w), output_fmt,
                                                   return_prefix_tokens)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop blocks after the last one `indices` needs (and the norm/head) to save compute."""
        take, last = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            if self.attn_pool is not None:  # as timm: no attention pool, tokens pass through
                self.attn_pool = None
                self.reset_classifier(0, "")
            else:
                self.reset_classifier(0)
        return sorted(take)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in VIT_POOL_TYPES:
                raise ValueError(f"global_pool={global_pool!r} is not one of {VIT_POOL_TYPES}")
            if global_pool == "token" and self.cls_token is None:
                raise ValueError("global_pool='token' needs a class token, and this model has none")
            if global_pool == "map" and self.attn_pool is None:
                raise ValueError("global_pool='map' needs the attention pool this model was built without")
            if global_pool != "map":
                self.attn_pool = None  # as timm: leaving 'map' drops the attention pool
            self.global_pool = self.config.global_pool = global_pool
        self.num_classes = self.config.num_classes = num_classes
        self.head = self._linear_head(num_classes)
        if self.head_dist is not None:
            self.head_dist = self._linear_head(num_classes)
        for head in (self.head, self.head_dist):
            init_linear_(head)

    def get_classifier(self) -> nn.Module:
        return self.head if self.head_dist is None else nn.ModuleList([self.head, self.head_dist])

    def set_distilled_training(self, enable: bool = True) -> None:
        self.distilled_training = enable

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token", "reg_token"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's groups: the embedding, each block, the final norm with the last block; the head after."""
        return {"stem": r"^cls_token|^pos_embed|^patch_embed|^reg_token|^dist_token|^norm_pre",
                "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (training only)."""
        self.grad_checkpointing = enable

    # ----- checkpoint adaptation -------------------------------------------------------------
    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fit weights to this model: Hugging Face ViT/DeiT names converted, the position embedding resampled
        to another image size, the patch projection refitted to another channel count."""
        from .hf import convert_hf_state_dict, is_hf_state_dict

        state_dict = convert_hf_state_dict(state_dict) if is_hf_state_dict(state_dict) else dict(state_dict)
        pos = state_dict.get("pos_embed")
        if pos is not None and pos.shape != self.pos_embed.shape and pos.shape[-1] == self.embed_dim:
            prefix_in_pos = 0 if self.no_embed_class else self.num_prefix_tokens
            state_dict["pos_embed"] = resample_abs_pos_embed(pos, self.patch_embed.grid_size, prefix_in_pos)
        if isinstance(self.patch_embed, PatchEmbed):
            adapt_stem_channels(state_dict, "patch_embed.proj.weight", self.patch_embed.proj.weight)
        return state_dict
