"""CaiT config (timm's `Cait` constructor arguments) and timm's named models."""

from dataclasses import dataclass

from ...layers import ACT_LAYERS
from .._protocol import IMAGENET_MEAN, IMAGENET_STD
from ..registry import register_model

CAIT_POOL_TYPES = ("token", "avg", "")


@dataclass
class CaitConfig:
    """Constructor arguments, named and defaulted like timm's `Cait`.

    `depth` self-attention blocks (talking heads) run over the patch tokens only; the class token joins in
    the `depth_token_only` class-attention blocks after them. `norm_eps` is vitkit's (timm passes
    `norm_layer=partial(nn.LayerNorm, eps=1e-6)`); timm's layer-class arguments (`block_layers`,
    `attn_block`, ...) have no equivalent: vitkit builds CaiT's own blocks."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "token"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    init_values: float = 1e-4
    depth_token_only: int = 2
    mlp_ratio_token_only: float = 4.0
    act_layer: str = "gelu"
    norm_eps: float = 1e-6
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self):
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            _check_int(self, name, low=1)
        for name in ("num_classes", "depth_token_only"):
            _check_int(self, name, low=0)
        self.check_pool(self.global_pool)
        if self.act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer={self.act_layer!r} is not one of {sorted(ACT_LAYERS)}")
        for name in ("mlp_ratio", "mlp_ratio_token_only", "init_values", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @staticmethod
    def check_pool(global_pool: str) -> None:
        if global_pool not in CAIT_POOL_TYPES:
            raise ValueError(f"global_pool={global_pool!r} is not one of {CAIT_POOL_TYPES}")


def _check_int(config, name: str, low: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive integer" if low == 1 else "a non-negative integer"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


# timm's named models: (img_size, embed_dim, depth, num_heads, init_values); all patch 16, 2 class-attention blocks
NAMED = {
    "cait_xxs24_224": (224, 192, 24, 4, 1e-5),
    "cait_xxs24_384": (384, 192, 24, 4, 1e-5),
    "cait_xxs36_224": (224, 192, 36, 4, 1e-5),
    "cait_xxs36_384": (384, 192, 36, 4, 1e-5),
    "cait_xs24_384": (384, 288, 24, 6, 1e-5),
    "cait_s24_224": (224, 384, 24, 8, 1e-5),
    "cait_s24_384": (384, 384, 24, 8, 1e-5),
    "cait_s36_384": (384, 384, 36, 8, 1e-6),
    "cait_m36_384": (384, 768, 36, 16, 1e-6),
    "cait_m48_448": (448, 768, 48, 16, 1e-6),
}
# timm's pretrained cfg for every CaiT: ImageNet mean/std, no crop, bicubic (mean/std are averaged over the
# channels for another in_chans)
PRETRAINED_CFG = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 1.0, "interpolation": "bicubic"}


def _register() -> None:
    for name, (img_size, dim, depth, heads, init_values) in NAMED.items():
        register_model(name, "cait", pretrained_cfg=PRETRAINED_CFG, img_size=img_size, patch_size=16,
                       embed_dim=dim, depth=depth, num_heads=heads, init_values=init_values)


_register()
