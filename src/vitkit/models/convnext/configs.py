"""ConvNeXt's config (timm's constructor arguments) and timm's named ConvNeXt V1 / V2 models."""

from dataclasses import dataclass

from ..registry import register_model
from .model import POOL_TYPES


@dataclass
class ConvNeXtConfig:
    """Constructor arguments, named and defaulted like timm's `ConvNeXt` (ConvNeXt-T).

    `img_size` (vitkit's; timm's ConvNeXt has no such argument) is only the default input size the model reports
    (`input_spec`, which the trainer and `vitkit predict` use; None: timm's 224): ConvNeXt takes any input size
    divisible by its total stride (patch_size * 2 ** (stages - 1)), so a given one must be such a size.
    `head_norm_eps` is vitkit's own (None = `norm_eps`): Hugging Face ConvNeXt uses 1e-6 in the stem and
    blocks but `layer_norm_eps` (1e-12 by default) in the final norm.
    """

    img_size: int | None = None
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    kernel_sizes: int | tuple[int, ...] = 7
    ls_init_value: float | None = 1e-6
    patch_size: int = 4
    head_init_scale: float = 1.0
    head_norm_first: bool = False
    conv_mlp: bool = False
    conv_bias: bool = True
    use_grn: bool = False
    norm_eps: float | None = None
    head_norm_eps: float | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self):
        self.depths = tuple(int(d) for d in self.depths)
        self.dims = tuple(int(d) for d in self.dims)
        if isinstance(self.kernel_sizes, int):
            self.kernel_sizes = (self.kernel_sizes,) * len(self.depths)
        self.kernel_sizes = tuple(int(k) for k in self.kernel_sizes)
        if not self.depths or len(self.dims) != len(self.depths) or len(self.kernel_sizes) != len(self.depths):
            raise ValueError(f"depths {self.depths}, dims {self.dims} and kernel_sizes {self.kernel_sizes} must "
                             "have one entry per stage")
        if any(d < 1 for d in self.depths + self.dims) or any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError("depths and dims must be positive and kernel_sizes positive odd integers")
        for name in ("in_chans", "patch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        stride = self.patch_size * 2 ** (len(self.depths) - 1)
        if self.img_size is not None and (int(self.img_size) < 1 or self.img_size % stride):
            raise ValueError(f"img_size {self.img_size} is not a multiple of this ConvNeXt's total stride {stride} "
                             f"(patch_size {self.patch_size}, {len(self.depths)} stages)")
        if self.global_pool not in POOL_TYPES:
            raise ValueError(f"global_pool={self.global_pool!r} is not one of {POOL_TYPES}")
        if self.head_norm_first:
            raise ValueError("head_norm_first=True (timm's ClassifierHead after a norm_pre) is not supported; "
                             "every timm ConvNeXt named config uses head_norm_first=False")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")


# timm's named configs: name -> (depths, dims); the four smallest use 1x1-conv MLPs (faster at small widths)
SIZES = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}
for size, (depths, dims) in SIZES.items():
    conv_mlp = {"conv_mlp": True} if size in ("atto", "femto", "pico", "nano") else {}
    register_model(f"convnext_{size}", "convnext", depths=depths, dims=dims, **conv_mlp)
    register_model(f"convnextv2_{size}", "convnext", depths=depths, dims=dims, use_grn=True, ls_init_value=None,
                   **conv_mlp)
