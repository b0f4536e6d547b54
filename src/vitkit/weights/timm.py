"""timm models in and out: the vitkit model equal to timm's `Class(**kwargs)` (with its weights), and the timm
model equal to a vitkit one (the bench's timm peer). Each family maps its own arguments
(`Family.timm_classes`, `Family.timm_peer`)."""

from typing import Any

import torch
from torch import nn

from ..models import build_model, families, family_of


def config_from_timm(timm_class: str, kwargs: dict[str, Any]):
    """The vitkit config equal to timm's `timm_class(**kwargs)`."""
    for family in families():
        if timm_class in family.timm_classes:
            return family.timm_classes[timm_class](kwargs)
    supported = sorted(c for f in families() for c in f.timm_classes)
    raise ValueError(f"timm class {timm_class!r} is not supported; supported: {', '.join(supported)}")


def from_timm(timm_class: str, kwargs: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None,
              strict: bool = True) -> nn.Module:
    """The vitkit model equal to timm's `timm_class(**kwargs)`, with a timm state dict loaded if given."""
    model = build_model(config_from_timm(timm_class, kwargs))
    if state_dict is not None:
        from .loading import load_state_dict

        load_state_dict(model, state_dict, strict=strict, source=f"timm {timm_class} state dict")
    return model


def timm_kwargs_from(config) -> tuple[str, dict[str, Any]]:
    """timm's class name and constructor arguments for a vitkit config; the inverse of `config_from_timm`.
    A ValueError says why when timm has no equal model."""
    peer = family_of(config).timm_peer
    if peer is None:
        raise ValueError(f"vitkit cannot build timm's equal of its {family_of(config).name} family")
    _, class_name, kwargs, _ = peer(config)
    return class_name, kwargs


def to_timm(model) -> nn.Module:
    """The timm model equal to a vitkit model, with its weights (timm's names are vitkit's), in eval mode.
    Raises ImportError when timm does not import (it needs torchvision)."""
    import importlib

    peer = family_of(model).timm_peer
    if peer is None:
        raise ValueError(f"vitkit cannot build timm's equal of its {family_of(model).name} family")
    module, class_name, kwargs, build_only = peer(model.config)
    timm_model = getattr(importlib.import_module(module), class_name)(**kwargs, **build_only)
    timm_model.load_state_dict(model.state_dict())
    return timm_model.eval()
