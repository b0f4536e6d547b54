"""Swin V1 config (timm's `SwinTransformer` constructor arguments) and timm's named models."""

from dataclasses import dataclass

from ...layers import ACT_LAYERS
from ..registry import register_model

SWIN_POOL_TYPES = ("avg", "max", "avgmax", "")


@dataclass
class SwinConfig:
    """Constructor arguments, named and defaulted like timm's `SwinTransformer` (Swin-T, 224).

    `embed_dim` is the first stage's width; each later stage doubles it (PatchMerging). `img_size` must be
    a multiple of patch_size * 2**(stages - 1), and each stage's grid a multiple of its window (a window
    larger than a stage's grid shrinks to the grid, which then is not shifted, as timm does). The model is
    built for img_size but also runs other input sizes whose stage grids those windows divide."""

    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    head_dim: int | None = None
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    act_layer: str = "gelu"
    drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1

    def __post_init__(self):
        self.depths, self.num_heads = tuple(int(d) for d in self.depths), tuple(int(h) for h in self.num_heads)
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "window_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.depths or len(self.num_heads) != len(self.depths) or min(self.depths + self.num_heads) < 1:
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must be equally long lists of "
                             "positive integers, one per stage")
        self.check_pool(self.global_pool)
        if self.act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer={self.act_layer!r} is not one of {sorted(ACT_LAYERS)}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        stride = self.patch_size * 2 ** (len(self.depths) - 1)
        if self.img_size % stride:
            raise ValueError(f"img_size {self.img_size} must be a multiple of {stride} (patch_size {self.patch_size} "
                             f"x 2**{len(self.depths) - 1} patch mergings)")
        for i, (res, window) in enumerate(zip(self.stage_resolutions(), self.stage_windows(), strict=True)):
            if res % window:
                raise ValueError(f"img_size {self.img_size} gives stage {i} a {res}x{res} grid, not a multiple of "
                                 f"window_size {window}; img_size must be a multiple of {self.size_multiple()}")
        if self.head_dim is None:
            bad = [(d, h) for d, h in zip(self.embed_dims, self.num_heads, strict=True) if d % h]
            if bad:
                raise ValueError(f"stage widths must be divisible by their num_heads, got (width, heads) {bad}")

    @staticmethod
    def check_pool(global_pool: str) -> None:
        if global_pool not in SWIN_POOL_TYPES:
            raise ValueError(f"global_pool={global_pool!r} is not one of {SWIN_POOL_TYPES}")

    @property
    def embed_dims(self) -> list[int]:
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    def stage_resolutions(self) -> list[int]:
        return [self.img_size // self.patch_size // 2**i for i in range(len(self.depths))]

    def stage_windows(self) -> list[int]:
        """timm clamps the window to a stage's grid when the grid is smaller."""
        return [min(self.window_size, res) for res in self.stage_resolutions()]

    def size_multiple(self) -> int:
        """An img_size multiple that always builds (no stage grid smaller than the window). The built model
        accepts inputs at `SwinTransformer.size_multiple()`, which counts clamped windows and can be smaller."""
        return self.patch_size * 2 ** (len(self.depths) - 1) * self.window_size


def _register() -> None:
    # timm's names: (embed_dim, depths, num_heads)
    sizes = {"tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)), "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
             "base": (128, (2, 2, 18, 2), (4, 8, 16, 32))}
    for size, (dim, depths, heads) in sizes.items():
        register_model(f"swin_{size}_patch4_window7_224", "swin", patch_size=4, window_size=7, embed_dim=dim,
                       depths=depths, num_heads=heads)


_register()
