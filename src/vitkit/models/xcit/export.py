"""vitkit XCiT -> timm's `Xcit` arguments (the bench's timm peer). There is no transformers XCiT, so no
transformers peer."""

from typing import Any

from .._timm_args import config_from_timm_args, timm_peer_of
from .configs import XcitConfig


def timm_peer(config) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    return timm_peer_of(config, XcitConfig, "timm.models.xcit", "Xcit")


def config_from_timm(kwargs: dict[str, Any]) -> XcitConfig:
    return config_from_timm_args(kwargs, "xcit", ("img_size",), "XCiT")
