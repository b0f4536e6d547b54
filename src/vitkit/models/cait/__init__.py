"""CaiT, Class-Attention in Image Transformers ("Going deeper with Image Transformers", Touvron et al. 2021):
timm's `Cait` (timm/models/cait.py), names and weights, registered as architecture "cait": model.py the
network, configs.py the named models, convert.py the original release's layout, export.py timm's
arguments both ways (the bench's timm peer).

transformers has no CaiT, so this family has no Hugging Face converter and no transformers peer.
"""

from .._limits import is_number, out_of_range
from ..registry import Family, register_family
from . import convert, export  # noqa: F401
from .configs import CaitConfig
from .model import Cait


def _check_config(data: dict, source: str) -> None:
    """Both MLP widths bounded (they size the MLP weights), as other families bound `mlp_ratio`."""
    for key in ("mlp_ratio", "mlp_ratio_token_only"):
        if key in data and not (is_number(data[key]) and 0 < data[key] <= 64):
            raise out_of_range(data, key, "a number in (0, 64]", source)


register_family(Family(
    name="cait", config_cls=CaitConfig, model_cls=Cait,
    timm_classes={"Cait": export.config_from_timm}, timm_peer=export.timm_peer,
    config_limits={"patch_size": (1, 1024), "embed_dim": (1, 16384), "depth": (1, 512), "num_heads": (1, 1024),
                   "depth_token_only": (0, 64)},
    check_config=_check_config,
))

__all__ = ["Cait", "CaitConfig"]
