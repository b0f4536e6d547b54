"""MetaFormer's config (timm's `MetaFormer` constructor arguments, with layers named by strings) and timm's
named PoolFormer V1 / V2, ConvFormer and CAFormer models."""

from dataclasses import dataclass

from ...layers.pooling import MAP_POOL_TYPES
from .._limits import shown
from ..registry import register_model
from .layers import ACTIVATIONS, NORM_LAYERS

TOKEN_MIXERS = ("pooling", "sepconv", "attention", "identity")
POOL_TYPES = MAP_POOL_TYPES
PER_STAGE = ("token_mixers", "norm_layers", "layer_scale_init_values", "res_scale_init_values")


@dataclass
class MetaFormerConfig:
    """Constructor arguments, named and defaulted like timm's `MetaFormer` (PoolFormer V2 S12 widths).

    timm passes layer classes; here they are strings: `token_mixers` one of "pooling" (timm's `Pooling`),
    "sepconv" (`SepConv`), "attention" (`Attention`), "identity"; `mlp_act` "starrelu", "squaredrelu" or a
    timm `act_layer` name ("gelu", ...); `norm_layers` / `downsample_norm` / `output_norm` one of "groupnorm1",
    "groupnorm1_nobias", "layernorm2d", "layernorm2d_nobias" (NCHW stages) or "layernorm", "layernorm_nobias"
    (attention stages, which run on tokens). `token_mixers`, `norm_layers`, `layer_scale_init_values` and
    `res_scale_init_values` take one value or one per stage (stored per stage).

    `pool_size`, `expansion_ratio` / `kernel_size` / `padding`, `head_dim` / `num_heads` / `qkv_bias` /
    `proj_bias` are the keyword arguments timm's MetaFormer forwards to its token mixers.

    vitkit's own: `img_size` (the size `input_spec` reports; any multiple of the total stride works) and
    `norm_before_pool` (Hugging Face PoolFormer: the head's norm runs on the whole map before average pooling;
    timm pools first).

    As timm, a stage whose width equals the previous one's has no downsampling layer (its stride is 1).
    """

    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"
    depths: tuple[int, ...] = (2, 2, 6, 2)
    dims: tuple[int, ...] = (64, 128, 320, 512)
    token_mixers: str | tuple[str, ...] = "pooling"
    mlp_act: str = "starrelu"
    mlp_bias: bool = False
    drop_path_rate: float = 0.0
    proj_drop_rate: float = 0.0
    drop_rate: float = 0.0
    layer_scale_init_values: float | None | tuple[float | None, ...] = None
    res_scale_init_values: float | None | tuple[float | None, ...] = (None, None, 1.0, 1.0)
    downsample_norm: str | None = "layernorm2d_nobias"
    norm_layers: str | tuple[str, ...] = "layernorm2d_nobias"
    output_norm: str = "layernorm2d"
    use_mlp_head: bool = True
    pool_size: int = 3
    expansion_ratio: float = 2.0
    kernel_size: int = 7
    padding: int = 3
    head_dim: int = 32
    num_heads: int | None = None
    qkv_bias: bool = False
    proj_bias: bool = False
    img_size: int = 224
    norm_before_pool: bool = False

    def __post_init__(self):
        if isinstance(self.depths, int) or isinstance(self.dims, int):
            raise ValueError(f"depths and dims must be lists, one entry per stage; got depths={self.depths!r}, "
                             f"dims={self.dims!r}")
        self.depths = tuple(int(d) for d in self.depths)
        self.dims = tuple(int(d) for d in self.dims)
        stages = len(self.depths)
        if not stages or len(self.dims) != stages:
            raise ValueError(f"dims {self.dims} must have one entry per stage of depths {self.depths}")
        if min(self.depths) < 1 or min(self.dims) < 1:
            raise ValueError(f"depths {self.depths} and dims {self.dims} must be positive integers")
        for name in PER_STAGE:
            value = getattr(self, name)
            value = tuple(value) if isinstance(value, list | tuple) else (value,) * stages
            if len(value) != stages:
                raise ValueError(f"{name} has {len(value)} entries for {stages} stages (depths {self.depths}); "
                                 "give one value or one per stage")
            setattr(self, name, value)
        for name in ("in_chans", "pool_size", "kernel_size", "head_dim", "img_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {shown(value)}")
        if self.num_heads is not None and (isinstance(self.num_heads, bool) or int(self.num_heads) < 1):
            raise ValueError(f"num_heads must be a positive integer or None, got {shown(self.num_heads)}")
        if self.pool_size % 2 == 0:
            raise ValueError(f"pool_size must be odd (the pooled map keeps its size), got {self.pool_size}")
        if self.padding < 0 or 2 * self.padding != self.kernel_size - 1:
            raise ValueError(f"padding={self.padding} must be (kernel_size - 1) / 2 = {(self.kernel_size - 1) / 2} "
                             "so the separable convolution keeps the map's size")
        if not isinstance(self.expansion_ratio, int | float) or not 0 < self.expansion_ratio <= 64:
            raise ValueError(f"expansion_ratio must be a number in (0, 64], got {shown(self.expansion_ratio)}")
        if not isinstance(self.mlp_act, str) or self.mlp_act not in ACTIVATIONS:
            raise ValueError(f"mlp_act={shown(self.mlp_act)} is not one of {sorted(ACTIVATIONS)}")
        if self.global_pool not in POOL_TYPES:
            raise ValueError(f"global_pool={shown(self.global_pool)} is not one of {POOL_TYPES}")
        for name, allowed in (("downsample_norm", [None, *_nchw_norms()]), ("output_norm", _nchw_norms())):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={shown(getattr(self, name))} is not one of {allowed}")
        for i, (mixer, norm, dim) in enumerate(zip(self.token_mixers, self.norm_layers, self.dims, strict=True)):
            if not isinstance(mixer, str) or mixer not in TOKEN_MIXERS:
                raise ValueError(f"token_mixers[{i}]={shown(mixer)} is not one of {TOKEN_MIXERS}")
            if not isinstance(norm, str) or norm not in NORM_LAYERS:
                raise ValueError(f"norm_layers[{i}]={shown(norm)} is not one of {sorted(NORM_LAYERS)}")
            if NORM_LAYERS[norm][1] == (mixer == "attention"):
                kind = "token (layernorm, layernorm_nobias)" if mixer == "attention" else \
                    f"NCHW ({', '.join(_nchw_norms())})"
                raise ValueError(f"norm_layers[{i}]={norm!r} does not fit stage {i}'s {mixer!r} token mixer; it "
                                 f"needs a {kind} norm")
            if mixer == "attention":
                heads = self.num_heads or max(dim // self.head_dim, 1)
                if heads * self.head_dim != dim:
                    raise ValueError(f"dims[{i}]={dim} of an attention stage must equal num_heads x head_dim "
                                     f"({heads} x {self.head_dim}); choose head_dim (and num_heads) to fit")
        for name in ("layer_scale_init_values", "res_scale_init_values"):
            if any(v is not None and not isinstance(v, int | float) for v in getattr(self, name)):
                raise ValueError(f"{name} entries must be numbers or None, got {shown(getattr(self, name))}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    def uses_tokens(self, stage: int) -> bool:
        """Whether a stage runs on (B, N, C) tokens (attention) instead of NCHW maps."""
        return self.token_mixers[stage] == "attention"


def _nchw_norms() -> list[str]:
    return sorted(name for name, (_, nchw) in NORM_LAYERS.items() if nchw)


# timm's named configs ---------------------------------------------------------------------------------------
_S = (64, 128, 320, 512)
_M = (96, 192, 384, 768)
POOLFORMER_SIZES = {  # name -> (depths, dims, layer scale init (V1), eval crop (V1))
    "s12": ((2, 2, 6, 2), _S, 1e-5, 0.9), "s24": ((4, 4, 12, 4), _S, 1e-5, 0.9),
    "s36": ((6, 6, 18, 6), _S, 1e-6, 0.9), "m36": ((6, 6, 18, 6), _M, 1e-6, 0.95),
    "m48": ((8, 8, 24, 8), _M, 1e-6, 0.95),
}
FORMER_SIZES = {
    "s18": ((3, 3, 9, 3), _S), "s36": ((3, 12, 18, 3), _S),
    "m36": ((3, 12, 18, 3), (96, 192, 384, 576)), "b36": ((3, 12, 18, 3), (128, 256, 512, 768)),
}
_BICUBIC = {"interpolation": "bicubic"}

for size, (depths, dims, ls, crop) in POOLFORMER_SIZES.items():
    register_model(f"poolformer_{size}", "metaformer", pretrained_cfg={"crop_pct": crop, **_BICUBIC},
                   depths=depths, dims=dims, downsample_norm=None, mlp_act="gelu", mlp_bias=True,
                   norm_layers="groupnorm1", layer_scale_init_values=ls, res_scale_init_values=None,
                   use_mlp_head=False)
    register_model(f"poolformerv2_{size}", "metaformer", pretrained_cfg={"crop_pct": 1.0, **_BICUBIC},
                   depths=depths, dims=dims, norm_layers="groupnorm1_nobias", use_mlp_head=False)
for size, (depths, dims) in FORMER_SIZES.items():
    register_model(f"convformer_{size}", "metaformer", pretrained_cfg={"crop_pct": 1.0, **_BICUBIC},
                   depths=depths, dims=dims, token_mixers="sepconv", norm_layers="layernorm2d_nobias")
    register_model(f"caformer_{size}", "metaformer", pretrained_cfg={"crop_pct": 1.0, **_BICUBIC},
                   depths=depths, dims=dims, token_mixers=("sepconv", "sepconv", "attention", "attention"),
                   norm_layers=("layernorm2d_nobias",) * 2 + ("layernorm_nobias",) * 2)
