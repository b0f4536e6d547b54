"""CCT config (the official `CCT` constructor's arguments, under timm-style names) and the official named
models, plus 28x28 one-channel variants for Fashion-MNIST.

Names follow the official repository: `cct_{layers}_{kernel}x{conv layers}_{img_size}`, with `_sine` for the
sinusoidal position embedding and `_c100` / `_fl` for the CIFAR-100 / Flowers-102 heads.
"""

from dataclasses import dataclass

from ...layers import ACT_LAYERS
from .._protocol import IMAGENET_MEAN, IMAGENET_STD
from ..registry import register_model

CCT_POOL_TYPES = ("seq", "avg")  # "seq": the paper's sequence pooling; "avg": the token mean
CCT_POS_EMBED_TYPES = ("learnable", "sine", "none")


@dataclass
class CctConfig:
    """Constructor arguments; official names in brackets.

    Tokenizer: `n_conv_layers` blocks of [conv `kernel_size` x `kernel_size` (no bias), ReLU, max-pool];
    the inner convolutions are `conv_width` wide (`in_planes`, 64), the last one `embed_dim`. `conv_stride`
    and `conv_padding` default (None) to the official rule max(1, kernel_size // 2 - 1) and
    max(1, kernel_size // 2): stride 1 for a 3x3 kernel, 2 for a 7x7 one.

    Transformer: `depth` (`num_layers`) blocks of width `embed_dim` (`embedding_dim`), `pos_embed_type`
    (`positional_embedding`) "learnable", "sine" (1-D sinusoidal over the token index, recomputed for any
    length) or "none"; `global_pool` "seq" (sequence pooling, the paper's) or "avg". `drop_rate` is the
    official `dropout` (embedding, projection and MLP dropout), `attn_drop_rate` its `attention_dropout`,
    `drop_path_rate` its `stochastic_depth` (linear in depth). The official constructor defaults the last
    two to 0.1; here they default to 0 (timm's convention: set them for training, e.g. through
    `create_model(..., drop_path_rate=0.1)` or `TrainConfig.drop_path`)."""

    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "seq"
    embed_dim: int = 768
    depth: int = 14
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    kernel_size: int = 7
    n_conv_layers: int = 1
    conv_stride: int | None = None
    conv_padding: int | None = None
    conv_width: int = 64
    pooling_kernel_size: int = 3
    pooling_stride: int = 2
    pooling_padding: int = 1
    pos_embed_type: str = "learnable"
    act_layer: str = "gelu"
    norm_eps: float = 1e-5
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self):
        for name in ("img_size", "in_chans", "embed_dim", "depth", "num_heads", "kernel_size", "n_conv_layers",
                     "conv_width", "pooling_kernel_size", "pooling_stride"):
            _check_int(self, name, low=1)
        for name in ("num_classes", "pooling_padding"):
            _check_int(self, name, low=0)
        if self.conv_stride is not None:
            _check_int(self, "conv_stride", low=1)
        if self.conv_padding is not None:
            _check_int(self, "conv_padding", low=0)
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"qkv_bias must be True or False, got {self.qkv_bias!r}")
        self.check_pool(self.global_pool)
        if self.pos_embed_type not in CCT_POS_EMBED_TYPES:
            raise ValueError(f"pos_embed_type={self.pos_embed_type!r} is not one of {CCT_POS_EMBED_TYPES}")
        if self.act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer={self.act_layer!r} is not one of {sorted(ACT_LAYERS)}")
        for name in ("mlp_ratio", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.pooling_padding * 2 > self.pooling_kernel_size:
            raise ValueError(f"pooling_padding {self.pooling_padding} is more than half of pooling_kernel_size "
                             f"{self.pooling_kernel_size} (max-pool's limit)")
        grid = self.token_grid(self.img_size)
        if grid < 1:
            raise ValueError(f"img_size {self.img_size} leaves no tokens after {self.n_conv_layers} tokenizer "
                             f"layer(s) of kernel {self.kernel_size}")

    @property
    def stride(self) -> int:
        """The convolutions' stride: `conv_stride`, or the official rule max(1, kernel_size // 2 - 1)."""
        return self.conv_stride if self.conv_stride is not None else max(1, self.kernel_size // 2 - 1)

    @property
    def padding(self) -> int:
        """The convolutions' padding: `conv_padding`, or the official rule max(1, kernel_size // 2)."""
        return self.conv_padding if self.conv_padding is not None else max(1, self.kernel_size // 2)

    @property
    def reduction(self) -> int:
        """Input pixels per token along a side (the tokenizer's total stride)."""
        return (self.stride * self.pooling_stride) ** self.n_conv_layers

    def token_grid(self, side: int) -> int:
        """Tokens along one side of a `side`-pixel input: each layer's convolution, then its max-pool."""
        for _ in range(self.n_conv_layers):
            side = (side + 2 * self.padding - self.kernel_size) // self.stride + 1
            side = (side + 2 * self.pooling_padding - self.pooling_kernel_size) // self.pooling_stride + 1
            if side < 1:
                return 0
        return side

    @staticmethod
    def check_pool(global_pool: str) -> None:
        if global_pool not in CCT_POOL_TYPES:
            raise ValueError(f"global_pool={global_pool!r} is not one of {CCT_POOL_TYPES}")


def _check_int(config, name: str, low: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive integer" if low == 1 else "a non-negative integer"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


# the official sizes (cct.py's cct_2 ... cct_14): layers -> (embed_dim, num_heads, mlp_ratio)
SIZES = {2: (128, 2, 1.0), 4: (128, 2, 1.0), 6: (256, 4, 2.0), 7: (256, 4, 2.0), 14: (384, 6, 3.0)}

# the training data's normalisation and eval crop, from the official configs/datasets/*.yml
CIFAR10_CFG = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616), "crop_pct": 1.0,
               "interpolation": "bicubic"}
CIFAR100_CFG = {"mean": (0.5071, 0.4867, 0.4408), "std": (0.2675, 0.2565, 0.2761), "crop_pct": 1.0,
                "interpolation": "bicubic"}
FLOWERS_CFG = {"mean": (0.4353, 0.3773, 0.2872), "std": (0.2966, 0.2455, 0.2698), "crop_pct": 1.0,
               "interpolation": "bicubic"}
IMAGENET_CFG = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 0.9, "interpolation": "bicubic"}
FASHION_MNIST_CFG = {"mean": (0.286,), "std": (0.353,), "crop_pct": 1.0, "interpolation": "bilinear"}

# name -> (layers, kernel, conv layers, img_size, num_classes, pretrained cfg, extra config)
NAMED = {
    "cct_2_3x2_32": (2, 3, 2, 32, 10, CIFAR10_CFG, {}),
    "cct_2_3x2_32_sine": (2, 3, 2, 32, 10, CIFAR10_CFG, {"pos_embed_type": "sine"}),
    "cct_4_3x2_32": (4, 3, 2, 32, 10, CIFAR10_CFG, {}),
    "cct_4_3x2_32_sine": (4, 3, 2, 32, 10, CIFAR10_CFG, {"pos_embed_type": "sine"}),
    "cct_6_3x1_32": (6, 3, 1, 32, 10, CIFAR10_CFG, {}),
    "cct_6_3x1_32_sine": (6, 3, 1, 32, 10, CIFAR10_CFG, {"pos_embed_type": "sine"}),
    "cct_6_3x2_32": (6, 3, 2, 32, 10, CIFAR10_CFG, {}),
    "cct_6_3x2_32_sine": (6, 3, 2, 32, 10, CIFAR10_CFG, {"pos_embed_type": "sine"}),
    "cct_7_3x1_32": (7, 3, 1, 32, 10, CIFAR10_CFG, {}),
    "cct_7_3x1_32_sine": (7, 3, 1, 32, 10, CIFAR10_CFG, {"pos_embed_type": "sine"}),
    "cct_7_3x1_32_c100": (7, 3, 1, 32, 100, CIFAR100_CFG, {}),
    "cct_7_3x1_32_sine_c100": (7, 3, 1, 32, 100, CIFAR100_CFG, {"pos_embed_type": "sine"}),
    "cct_7_3x2_32": (7, 3, 2, 32, 10, CIFAR10_CFG, {}),
    "cct_7_3x2_32_sine": (7, 3, 2, 32, 10, CIFAR10_CFG, {"pos_embed_type": "sine"}),
    "cct_7_7x2_224": (7, 7, 2, 224, 102, FLOWERS_CFG, {}),
    "cct_7_7x2_224_sine": (7, 7, 2, 224, 102, FLOWERS_CFG, {"pos_embed_type": "sine"}),
    "cct_14_7x2_224": (14, 7, 2, 224, 1000, IMAGENET_CFG, {}),
    "cct_14_7x2_384": (14, 7, 2, 384, 1000, IMAGENET_CFG, {}),
    "cct_14_7x2_384_fl": (14, 7, 2, 384, 102, FLOWERS_CFG, {}),
    # vitkit's: 28x28 one-channel Fashion-MNIST variants (not in the official repository). Tokens:
    # 3x2 -> 7x7 = 49, 3x1 -> 14x14 = 196. Parameters with 10 classes: cct_2_3x2_28 0.28M (280,651),
    # cct_4_3x2_28 0.48M (479,051), cct_6_3x2_28 3.32M (3,321,931), cct_7_3x1_28 3.74M (3,740,171)
    "cct_2_3x2_28": (2, 3, 2, 28, 10, FASHION_MNIST_CFG, {"in_chans": 1}),
    "cct_4_3x2_28": (4, 3, 2, 28, 10, FASHION_MNIST_CFG, {"in_chans": 1}),
    "cct_6_3x2_28": (6, 3, 2, 28, 10, FASHION_MNIST_CFG, {"in_chans": 1}),
    "cct_7_3x1_28": (7, 3, 1, 28, 10, FASHION_MNIST_CFG, {"in_chans": 1}),
}


def _register() -> None:
    for name, (layers, kernel, convs, img_size, num_classes, cfg, extra) in NAMED.items():
        dim, heads, mlp_ratio = SIZES[layers]
        register_model(name, "cct", pretrained_cfg=cfg, img_size=img_size, num_classes=num_classes,
                       embed_dim=dim, depth=layers, num_heads=heads, mlp_ratio=mlp_ratio, kernel_size=kernel,
                       n_conv_layers=convs, **extra)


_register()
