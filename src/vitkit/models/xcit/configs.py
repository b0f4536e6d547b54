"""XCiT config (timm's `Xcit` constructor arguments) and timm's named models."""

import math
from dataclasses import dataclass

from ...layers import ACT_LAYERS
from .._protocol import IMAGENET_MEAN, IMAGENET_STD
from ..registry import register_model

XCIT_POOL_TYPES = ("token", "avg", "")
XCIT_PATCH_SIZES = (8, 16)  # the convolutional stem has 3 (patch 8) or 4 (patch 16) stride-2 convolutions


@dataclass
class XcitConfig:
    """Constructor arguments, named and defaulted like timm's `Xcit`.

    `depth` XCA blocks (cross-covariance attention, local patch interaction, MLP) run over the patch tokens;
    the class token joins in the `cls_attn_layers` class-attention blocks after them. `eta` is the LayerScale
    initial value of every block; `tokens_norm` normalises all tokens (True) or only the class token (False)
    after the class attention, as timm. `norm_eps` is vitkit's (timm passes
    `norm_layer=partial(nn.LayerNorm, eps=1e-6)`); `act_layer` is a name in `vitkit.layers.ACT_LAYERS`."""

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
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    act_layer: str = "gelu"
    norm_eps: float = 1e-6
    cls_attn_layers: int = 2
    use_pos_embed: bool = True
    eta: float = 1.0
    tokens_norm: bool = False

    def __post_init__(self):
        for name in ("img_size", "in_chans", "embed_dim", "depth", "num_heads"):
            _check_int(self, name, low=1)
        for name in ("num_classes", "cls_attn_layers"):
            _check_int(self, name, low=0)
        if isinstance(self.patch_size, bool) or self.patch_size not in XCIT_PATCH_SIZES:
            raise ValueError(f"patch_size must be one of {XCIT_PATCH_SIZES} (XCiT's convolutional stem), "
                             f"got {self.patch_size!r}")
        self.check_pool(self.global_pool)
        if self.act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer={self.act_layer!r} is not one of {sorted(ACT_LAYERS)}")
        for name in ("qkv_bias", "use_pos_embed", "tokens_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("mlp_ratio", "eta", "norm_eps"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim < self.patch_size // 2:  # the stem's first convolution has embed_dim // (patch / 2)
            raise ValueError(f"embed_dim {self.embed_dim} is too small for patch_size {self.patch_size}: "
                             f"the convolutional stem needs at least {self.patch_size // 2}")

    @staticmethod
    def check_pool(global_pool: str) -> None:
        if global_pool not in XCIT_POOL_TYPES:
            raise ValueError(f"global_pool={global_pool!r} is not one of {XCIT_POOL_TYPES}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(config, name: str, low: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive integer" if low == 1 else "a non-negative integer"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


# timm's sizes: name -> (embed_dim, depth, num_heads, eta, tokens_norm); each with patch 16 and 8, at 224 and 384
SIZES = {
    "nano_12": (128, 12, 4, 1.0, False),
    "tiny_12": (192, 12, 4, 1.0, True),
    "small_12": (384, 12, 8, 1.0, True),
    "tiny_24": (192, 24, 4, 1e-5, True),
    "small_24": (384, 24, 8, 1e-5, True),
    "medium_24": (512, 24, 8, 1e-5, True),
    "large_24": (768, 24, 16, 1e-5, True),
}
# timm's pretrained cfg for every XCiT: ImageNet mean/std, no crop, bicubic (mean/std are averaged over the
# channels for another in_chans)
PRETRAINED_CFG = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 1.0, "interpolation": "bicubic"}


def _register() -> None:
    for size, (dim, depth, heads, eta, tokens_norm) in SIZES.items():
        for patch in (16, 8):
            for img_size in (224, 384):
                register_model(f"xcit_{size}_p{patch}_{img_size}", "xcit", pretrained_cfg=PRETRAINED_CFG,
                               img_size=img_size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                               eta=eta, tokens_norm=tokens_norm)


_register()
