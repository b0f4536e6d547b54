"""XCiT, Cross-Covariance Image Transformers ("XCiT: Cross-Covariance Image Transformers", El-Nouby et al.
2021): timm's `Xcit` (timm/models/xcit.py), names and weights, registered as architecture "xcit": model.py
the network, configs.py the named models, convert.py the original release's layout, export.py timm's
arguments both ways (the bench's timm peer).

transformers has no XCiT, so this family has no Hugging Face converter and no transformers peer.
"""

from .._limits import is_number, out_of_range
from ..registry import Family, register_family
from . import convert, export  # noqa: F401
from .configs import XcitConfig
from .model import Xcit


def _check_config(data: dict, source: str) -> None:
    """The MLP width bounded (it sizes the MLP weights), as other families bound `mlp_ratio`."""
    if "mlp_ratio" in data and not (is_number(data["mlp_ratio"]) and 0 < data["mlp_ratio"] <= 64):
        raise out_of_range(data, "mlp_ratio", "a number in (0, 64]", source)


register_family(Family(
    name="xcit", config_cls=XcitConfig, model_cls=Xcit,
    timm_classes={"Xcit": export.config_from_timm}, timm_peer=export.timm_peer,
    config_limits={"patch_size": (8, 16), "embed_dim": (1, 16384), "depth": (1, 512), "num_heads": (1, 1024),
                   "cls_attn_layers": (0, 64)},
    check_config=_check_config,
))

__all__ = ["Xcit", "XcitConfig"]
