"""PVTv2 config (timm's `PyramidVisionTransformerV2` constructor arguments) and timm's named models."""

from dataclasses import dataclass

from ..registry import register_model

PVT_V2_POOL_TYPES = ("avg", "")


def _per_stage(name: str, value, stages: int, kind: type) -> tuple:
    """One value per stage: a list as it is, a single value repeated (timm's `to_ntuple`)."""
    values = tuple(value) if isinstance(value, list | tuple) else (value,) * stages
    if len(values) != stages:
        raise ValueError(f"{name} has {len(values)} entries {values}, expected one per stage ({stages}, the length "
                         "of depths)")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and v != int(v)) or v <= 0:
            raise ValueError(f"{name} must hold positive {'integers' if kind is int else 'numbers'}, got {values}")
    return tuple(kind(v) for v in values)


@dataclass
class PvtV2Config:
    """Constructor arguments, named and defaulted like timm's `PyramidVisionTransformerV2` (PVTv2-B2 widths).

    Per-stage arguments (`num_heads`, `sr_ratios`, `mlp_ratios`) take one value per stage or a single value
    for all, as timm. Two fields are vitkit's own: `img_size`, the size the model is evaluated at (the
    network itself runs at any size whose stage grids are at least the spatial-reduction ratio), and
    `norm_eps`: None keeps timm's epsilons (1e-6 in the blocks and stage norms, torch's 1e-5 in the patch
    embeddings and the spatial reduction), a number uses it in every norm, as transformers'
    `layer_norm_eps` does."""

    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"
    depths: tuple[int, ...] = (3, 4, 6, 3)
    embed_dims: tuple[int, ...] = (64, 128, 256, 512)
    num_heads: tuple[int, ...] = (1, 2, 4, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratios: tuple[float, ...] = (8.0, 8.0, 4.0, 4.0)
    qkv_bias: bool = True
    linear: bool = False
    drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float | None = None

    def __post_init__(self):
        for name in ("img_size", "in_chans"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer, got {self.num_classes!r}")
        if not isinstance(self.depths, list | tuple) or not self.depths:
            raise ValueError(f"depths must be a non-empty list with one block count per stage, got {self.depths!r}")
        stages = len(self.depths)
        self.depths = _per_stage("depths", self.depths, stages, int)
        self.embed_dims = _per_stage("embed_dims", self.embed_dims, stages, int)
        self.num_heads = _per_stage("num_heads", self.num_heads, stages, int)
        self.sr_ratios = _per_stage("sr_ratios", self.sr_ratios, stages, int)
        self.mlp_ratios = _per_stage("mlp_ratios", self.mlp_ratios, stages, float)
        bad = [(d, h) for d, h in zip(self.embed_dims, self.num_heads, strict=True) if d % h]
        if bad:
            raise ValueError(f"embed_dims must be divisible by num_heads stage by stage, got (embed_dim, num_heads) "
                             f"{bad}")
        self.check_pool(self.global_pool)
        for name in ("drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.norm_eps is not None and (isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, int | float)
                                          or not 0.0 < self.norm_eps < 1.0):
            raise ValueError(f"norm_eps must be None (timm's) or a number in (0, 1), got {self.norm_eps!r}")
        if self.img_size < self.min_size():
            raise ValueError(f"img_size {self.img_size} is too small: stage grids must be at least their sr_ratios "
                             f"{self.sr_ratios}, which needs img_size >= {self.min_size()}")

    @staticmethod
    def check_pool(global_pool: str) -> None:
        if global_pool not in PVT_V2_POOL_TYPES:
            raise ValueError(f"global_pool={global_pool!r} is not one of {PVT_V2_POOL_TYPES}")

    def reductions(self) -> list[int]:
        """Input pixels per feature-map pixel, per stage: the stride-4 stem, then a stride-2 embedding each."""
        return [4 * 2**i for i in range(len(self.depths))]

    def min_size(self) -> int:
        """The smallest side that works: stage i's grid (ceil(side / reduction)) must be at least its sr_ratio,
        the spatial-reduction convolution's kernel (linear attention pools to 7x7 instead: any grid)."""
        if self.linear:
            return 1
        return max((r - 1) * red + 1 for r, red in zip(self.sr_ratios, self.reductions(), strict=True))


def _register() -> None:
    wide = (64, 128, 320, 512)
    heads = (1, 2, 5, 8)
    # timm's names: (depths, embed_dims, extra arguments)
    models = {
        "pvt_v2_b0": ((2, 2, 2, 2), (32, 64, 160, 256), {}),
        "pvt_v2_b1": ((2, 2, 2, 2), wide, {}),
        "pvt_v2_b2": ((3, 4, 6, 3), wide, {}),
        "pvt_v2_b3": ((3, 4, 18, 3), wide, {}),
        "pvt_v2_b4": ((3, 8, 27, 3), wide, {}),
        "pvt_v2_b5": ((3, 6, 40, 3), wide, {"mlp_ratios": (4.0, 4.0, 4.0, 4.0)}),
        "pvt_v2_b2_li": ((3, 4, 6, 3), wide, {"linear": True}),
    }
    for name, (depths, dims, extra) in models.items():
        register_model(name, "pvt_v2", pretrained_cfg={"crop_pct": 0.9, "interpolation": "bicubic"},
                       depths=depths, embed_dims=dims, num_heads=heads, **extra)


_register()
