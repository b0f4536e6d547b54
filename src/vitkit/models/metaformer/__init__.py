"""MetaFormer: PoolFormer V1 / V2, ConvFormer, CAFormer (Yu et al. 2022 / 2023; timm's `MetaFormer`, names and
weights), registered as architecture "metaformer": model.py the network, layers.py its token mixers, norms and
scales, configs.py the named models, convert.py Hugging Face PoolFormer names, export.py the reverse (the
bench's transformers peer)."""

from .._limits import check_int_limits
from ..registry import Family, register_family
from . import convert, export
from .configs import MetaFormerConfig
from .model import MetaFormer


def _check_config(data: dict, source: str) -> None:
    check_int_limits(data, {"num_heads": (1, 1024)}, source, optional=("num_heads",))


register_family(Family(
    name="metaformer", config_cls=MetaFormerConfig, model_cls=MetaFormer,
    from_hf={"poolformer": convert.from_hf}, transformers_peer=export.transformers_peer,
    config_limits={"depths": (1, 512), "dims": (1, 16384), "pool_size": (1, 63), "kernel_size": (1, 63),
                   "padding": (0, 31), "head_dim": (1, 4096)},
    check_config=_check_config,
))

__all__ = ["MetaFormer", "MetaFormerConfig"]
