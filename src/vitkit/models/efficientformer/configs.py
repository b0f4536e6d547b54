"""EfficientFormer's config (timm's `EfficientFormer` constructor arguments) and timm's named models."""

from dataclasses import dataclass

from .._limits import shown
from ..registry import register_model

EFFICIENTFORMER_POOL_TYPES = ("avg", "")
MAX_GRID = 32  # the attention grid's side at most: N = 1024 tokens, a 1M-entry bias index per attention block


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {shown(value)}")
    return value


def _stage_tuple(name: str, value, kind: type, stages: int | None = None) -> tuple:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{name} must be a non-empty list with one entry per stage, got {shown(value)}")
    if stages is not None and len(value) != stages:
        raise ValueError(f"{name} has {len(value)} entries {tuple(value)}, expected one per stage ({stages}, the "
                         "length of depths)")
    if kind is bool:
        if not all(isinstance(v, bool) for v in value):
            raise ValueError(f"{name} must hold booleans, got {shown(value)}")
        return tuple(value)
    for v in value:
        _positive_int(name, v)
    return tuple(value)


@dataclass
class EfficientFormerConfig:
    """Constructor arguments, named and defaulted like timm's `EfficientFormer` (L1 widths and depths).

    `depths` / `embed_dims`: blocks and channels per stage; `downsamples`: whether each stage starts with a
    stride-2 convolution (None: all but the first, as timm; a stage without one keeps the previous width).
    `num_vit`: how many of the last stage's final blocks are attention (Meta3D) blocks on tokens, after a
    `Flat`; the others are pooling (Meta4D) blocks on NCHW maps. `mlp_ratios` (one number, as timm),
    `pool_size`, `layer_scale_init_value`, the dropout rates and `global_pool` ("avg" over tokens, or ""
    for none) are timm's.

    vitkit's own: `img_size`, the one size the model runs at. The attention biases cover the last stage's
    grid, ceil(img_size / total stride) a side (7 at 224 for timm's models; timm fixes 7), so another
    img_size builds another model (whose biases do not take 224 weights) and inputs of any other size are
    refused.

    Differences from timm: `num_vit` defaults to 1 (L1's) and must be between 1 and depths[-1] (timm's
    default 0 leaves no tokens for its LayerNorm and token-mean head, which then fail).
    """

    depths: tuple[int, ...] = (3, 2, 6, 4)
    embed_dims: tuple[int, ...] = (48, 96, 224, 448)
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"
    downsamples: tuple[bool, ...] | None = None
    num_vit: int = 1
    mlp_ratios: float = 4.0
    pool_size: int = 3
    layer_scale_init_value: float = 1e-5
    drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    img_size: int = 224

    def __post_init__(self):
        self.depths = _stage_tuple("depths", self.depths, int)
        stages = len(self.depths)
        self.embed_dims = _stage_tuple("embed_dims", self.embed_dims, int, stages)
        if self.downsamples is not None:
            self.downsamples = _stage_tuple("downsamples", self.downsamples, bool, stages)
        for i, (down, prev, dim) in enumerate(zip(self.stage_downsamples(), (self.embed_dims[0],) + self.embed_dims,
                                                  self.embed_dims, strict=False)):
            if not down and prev != dim:
                raise ValueError(f"embed_dims[{i}]={dim} differs from the previous stage's {prev}, so stage {i} "
                                 f"needs a downsampling convolution (downsamples[{i}]=False)")
        for name in ("in_chans", "pool_size", "img_size", "num_vit"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer, got {shown(self.num_classes)}")
        if self.num_vit > self.depths[-1]:
            raise ValueError(f"num_vit={self.num_vit} attention blocks do not fit in the last stage's "
                             f"depths[-1]={self.depths[-1]} blocks")
        if self.pool_size % 2 == 0:
            raise ValueError(f"pool_size must be odd (the pooled map keeps its size), got {self.pool_size}")
        if isinstance(self.mlp_ratios, bool) or not isinstance(self.mlp_ratios, int | float) \
                or not 0 < self.mlp_ratios <= 64:
            raise ValueError(f"mlp_ratios must be one number in (0, 64] (timm's EfficientFormer takes a single "
                             f"ratio), got {shown(self.mlp_ratios)}")
        if isinstance(self.layer_scale_init_value, bool) or not isinstance(self.layer_scale_init_value, int | float):
            raise ValueError(f"layer_scale_init_value must be a number, got {shown(self.layer_scale_init_value)}")
        for name in ("drop_rate", "proj_drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {shown(value)}")
        self.check_pool(self.global_pool)
        if self.grid_size() > MAX_GRID:
            raise ValueError(f"img_size={self.img_size} gives the attention blocks a {self.grid_size()}x"
                             f"{self.grid_size()} grid; at most {MAX_GRID}x{MAX_GRID} (the attention bias index "
                             "grows with the grid's fourth power)")

    @staticmethod
    def check_pool(global_pool: str) -> None:
        if global_pool not in EFFICIENTFORMER_POOL_TYPES:
            raise ValueError(f"global_pool={shown(global_pool)} is not one of {EFFICIENTFORMER_POOL_TYPES}")

    def stage_downsamples(self) -> tuple[bool, ...]:
        """timm's default: every stage but the first starts with a stride-2 convolution."""
        if self.downsamples is not None:
            return self.downsamples
        return (False,) + (True,) * (len(self.depths) - 1)

    def reductions(self) -> list[int]:
        """Input pixels per feature-map pixel, per stage: the stride-4 stem, then x2 per downsampling."""
        out, reduction = [], 4
        for down in self.stage_downsamples():
            reduction *= 2 if down else 1
            out.append(reduction)
        return out

    def grid_size(self, side: int | None = None) -> int:
        """The last stage's grid side for an input side (default img_size): each stride-2 3x3 convolution
        with padding 1 gives ceil(side / 2)."""
        side = self.img_size if side is None else side
        for _ in range(2 + sum(self.stage_downsamples())):
            side = -(-side // 2)
        return side


# timm's EfficientFormer_width / EfficientFormer_depth, and num_vit per named model
SIZES = {
    "l1": ((3, 2, 6, 4), (48, 96, 224, 448), 1),
    "l3": ((4, 4, 12, 6), (64, 128, 320, 512), 4),
    "l7": ((6, 6, 18, 8), (96, 192, 384, 768), 8),
}

for _size, (_depths, _dims, _num_vit) in SIZES.items():
    register_model(f"efficientformer_{_size}", "efficientformer",
                   pretrained_cfg={"crop_pct": 0.95, "interpolation": "bicubic"},
                   depths=_depths, embed_dims=_dims, num_vit=_num_vit)
