"""BEiT config (timm's `Beit` constructor arguments) and timm's named models."""

from dataclasses import dataclass

from ..registry import register_model

BEIT_POOL_TYPES = ("avg", "token", "")  # timm: 'avg' means patch tokens + fc_norm; any other non-empty: class token
BEIT_MEAN_STD = (0.5, 0.5, 0.5)


@dataclass
class BeitConfig:
    """Constructor arguments, named and defaulted like timm's `Beit` (timm's defaults are a plain ViT-B/16
    with q/v biases; the named BEiT models switch on the relative position bias and LayerScale).

    vitkit's additions (timm has no such argument): `norm_eps`, the LayerNorm epsilon (timm's `norm_layer`
    default, 1e-6; Hugging Face BEiT checkpoints use 1e-12), and `fc_norm`, whether the pooled features
    are normalised by `fc_norm` (None: timm's rule, `global_pool == 'avg'`), so that a model whose head was
    reset to another pooling rebuilds with the same norms. timm's `swiglu_mlp`, `scale_mlp` and
    `norm_layer` (other than the epsilon) are not supported.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    qkv_bias: bool = True  # q and v biases; k never has one
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    init_values: float | None = None  # LayerScale (gamma_1, gamma_2) initial value; None or 0: no LayerScale
    use_abs_pos_emb: bool = True
    use_rel_pos_bias: bool = False  # one relative position bias table per block
    use_shared_rel_pos_bias: bool = False  # one table for all blocks (`rel_pos_bias`)
    head_init_scale: float = 0.001
    norm_eps: float = 1e-6
    fc_norm: bool | None = None

    def __post_init__(self):
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer, got {self.num_classes!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        self.check_pool(self.global_pool)
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.init_values is not None and self.init_values < 0:
            raise ValueError(f"init_values must be None or non-negative, got {self.init_values}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")

    @staticmethod
    def check_pool(global_pool: str) -> None:
        if global_pool not in BEIT_POOL_TYPES:
            raise ValueError(f"global_pool={global_pool!r} is not one of {BEIT_POOL_TYPES}")

    @property
    def use_fc_norm(self) -> bool:
        return self.global_pool == "avg" if self.fc_norm is None else bool(self.fc_norm)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def fixed_size(self) -> bool:
        """Absolute position embeddings and relative position biases both cover one patch grid."""
        return self.use_abs_pos_emb or self.use_rel_pos_bias or self.use_shared_rel_pos_bias


def _register() -> None:
    # timm's named models: BEiT (v1) fine-tuned weights, relative position bias per block, LayerScale
    base = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, use_abs_pos_emb=False,
                use_rel_pos_bias=True, init_values=0.1)
    large = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, use_abs_pos_emb=False,
                 use_rel_pos_bias=True, init_values=1e-5)
    cfg = dict(mean=BEIT_MEAN_STD, std=BEIT_MEAN_STD, interpolation="bicubic")
    register_model("beit_base_patch16_224", "beit", pretrained_cfg={**cfg, "crop_pct": 0.9}, **base)
    register_model("beit_base_patch16_384", "beit", pretrained_cfg={**cfg, "crop_pct": 1.0}, img_size=384, **base)
    register_model("beit_large_patch16_224", "beit", pretrained_cfg={**cfg, "crop_pct": 0.9}, **large)


_register()
