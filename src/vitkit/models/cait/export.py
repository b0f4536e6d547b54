"""vitkit CaiT -> timm's `Cait` arguments (the bench's timm peer). There is no transformers CaiT, so no
transformers peer."""

from typing import Any

from .._timm_args import config_from_timm_args, timm_peer_of
from .configs import CaitConfig


def timm_peer(config) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    return timm_peer_of(config, CaitConfig, "timm.models.cait", "Cait")


def config_from_timm(kwargs: dict[str, Any]) -> CaitConfig:
    return config_from_timm_args(kwargs, "cait", ("img_size", "patch_size"), "CaiT")
