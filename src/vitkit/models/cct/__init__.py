"""CCT, Compact Convolutional Transformers ("Escaping the Big Data Paradigm with Compact Transformers",
Hassani et al. 2021; official code github.com/SHI-Labs/Compact-Transformers), registered as architecture
"cct": model.py the network, configs.py the named models, convert.py the official checkpoint names.

timm and transformers have no CCT, so this family has no timm peer, Hugging Face converter or transformers
peer; tests/models/test_cct.py checks it against the official code instead.
"""

from .._limits import check_mlp_ratio, is_int, out_of_range
from ..registry import Family, register_family
from . import convert  # noqa: F401
from .configs import CctConfig
from .model import Cct

MAX_TOKENS = 2**16  # a 256 x 256 token grid, as ViT's bound


def _check_config(data: dict, source: str) -> None:
    """MLP width; the optional stride / padding (None: the official rule); the token count, which sizes the
    position embedding."""
    check_mlp_ratio(data, source)
    for key, low, high in (("conv_stride", 1, 64), ("conv_padding", 0, 64)):
        value = data.get(key)
        if value is not None and not (is_int(value) and low <= value <= high):
            raise out_of_range(data, key, f"null or an integer from {low} to {high}", source)
    try:
        config = CctConfig(**{k: v for k, v in data.items() if k != "architecture"})
    except (TypeError, ValueError):
        return  # building the config names the problem
    tokens = config.token_grid(config.img_size) ** 2
    if tokens > MAX_TOKENS:
        raise ValueError(f"{source}: img_size={config.img_size} with this tokenizer makes {tokens} tokens; expected "
                         f"at most {MAX_TOKENS}")


register_family(Family(
    name="cct", config_cls=CctConfig, model_cls=Cct,
    config_limits={"embed_dim": (1, 16384), "depth": (1, 512), "num_heads": (1, 1024), "kernel_size": (1, 64),
                   "n_conv_layers": (1, 8), "conv_width": (1, 4096), "pooling_kernel_size": (1, 64),
                   "pooling_stride": (1, 64), "pooling_padding": (0, 32)},
    check_config=_check_config,
))

__all__ = ["Cct", "CctConfig"]
