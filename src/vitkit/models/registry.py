"""Named model configs and `create_model`, following timm's names and arguments."""

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn


@dataclasses.dataclass(frozen=True)
class Family:
    """What a model family registers (from its own folder, `models/<family>/__init__.py`), so that `weights/`,
    `bench/` and the CLI dispatch to it instead of knowing its fields.

    Args:
        name: the architecture name saved in config.json ("vit", "swin", "convnext").
        config_cls, model_cls: the constructor-argument dataclass and the nn.Module built from it.
        from_hf: Hugging Face `model_type` -> converter(hf_config: dict, hf_state_dict) -> (config, vitkit-keyed
            state dict), for `save_pretrained` directories.
        transformers_peer: config -> (transformers class name, HF config dict, state-dict converter) of the
            transformers model equal to this one, or a ValueError saying why none is (the bench peer).
        timm_classes: timm class name -> config overrides, for `vitkit.from_timm(class, kwargs)`.
        timm_peer: config -> (timm module path, class name, constructor kwargs, build-only kwargs such as a
            norm layer object) of the equal timm model, or a ValueError (the bench peer; timm's names are this
            model's, so weights load as they are).
        config_limits: integer argument -> (low, high), checked on untrusted config.json files before anything
            is built (one value, or one per stage).
        check_config: more checks of an untrusted config dict (e.g. the token count), raising ValueError.
    """

    name: str
    config_cls: type
    model_cls: type[nn.Module]
    from_hf: dict[str, Callable] = dataclasses.field(default_factory=dict)
    transformers_peer: Callable | None = None
    timm_classes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    timm_peer: Callable | None = None
    config_limits: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    check_config: Callable[[dict, str], None] | None = None


_FAMILIES: dict[str, Family] = {}  # architecture name -> family
_MODELS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}  # name -> (architecture, kwargs, pretrained cfg)


def register_family(family: Family) -> None:
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    taken = {t for f in _FAMILIES.values() for t in f.from_hf}
    if taken & set(family.from_hf):
        raise ValueError(f"Hugging Face model_type(s) {sorted(taken & set(family.from_hf))} already have a family")
    _FAMILIES[family.name] = family


def families() -> list[Family]:
    return list(_FAMILIES.values())


def family_of(config_or_model) -> Family:
    """The family a config (or a model, through its `.config`) belongs to."""
    config = getattr(config_or_model, "config", config_or_model)
    for family in _FAMILIES.values():
        if type(config) is family.config_cls:
            return family
    raise TypeError(f"no model family is registered for config type {type(config).__name__}")


def family_named(name: str) -> Family:
    if name not in _FAMILIES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def hf_converter(model_type: str):
    """The converter some family registered for a Hugging Face `model_type`, or None."""
    return next((f.from_hf[model_type] for f in _FAMILIES.values() if model_type in f.from_hf), None)


def hf_model_types() -> list[str]:
    return sorted(t for f in _FAMILIES.values() for t in f.from_hf)


def square_sizes(kwargs: dict[str, Any], names: tuple[str, ...], family: str) -> dict[str, Any]:
    """timm's arguments with (h, w) sizes as one side: vitkit's families build square grids and windows."""
    kwargs = dict(kwargs)
    for name in names:
        if isinstance(kwargs.get(name), list | tuple):
            h, w = kwargs[name]
            if h != w:
                raise ValueError(f"vitkit's {family} supports a square {name} only, got {kwargs[name]}")
            kwargs[name] = h
    return kwargs


def register_model(name: str, architecture: str, *, pretrained_cfg: dict[str, Any] | None = None,
                   **config_kwargs) -> None:
    """Name a config of `architecture`. `pretrained_cfg` holds what timm keeps beside the architecture for a
    named model's weights: mean, std, crop_pct, interpolation (the model's `input_spec` reports them)."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    unknown = set(pretrained_cfg or {}) - set(PRETRAINED_CFG_KEYS)
    if unknown:
        raise ValueError(f"model {name!r}: pretrained_cfg keys {sorted(unknown)}; valid: {PRETRAINED_CFG_KEYS}")
    _MODELS[name] = (architecture, config_kwargs, dict(pretrained_cfg or {}))


PRETRAINED_CFG_KEYS = ("mean", "std", "crop_pct", "interpolation")


def pretrained_cfg(name: str) -> dict[str, Any]:
    """The named model's input normalisation and eval crop (empty: the family's defaults)."""
    model_architecture(name)
    return dict(_MODELS[name][2])


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_architecture(name: str) -> str:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}. See vitkit.list_models() for all {len(_MODELS)} names")
    return _MODELS[name][0]


def make_config(architecture: str, **kwargs):
    """Build an architecture's config, naming unknown arguments and the valid ones."""
    config_cls = family_named(architecture).config_cls
    valid = [f.name for f in dataclasses.fields(config_cls)]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        hints = [f"{k} (did you mean {', '.join(difflib.get_close_matches(k, valid, n=2))}?)" for k in unknown]
        raise ValueError(f"unknown {architecture} argument(s): {', '.join(hints)}; valid: {', '.join(valid)}")
    return config_cls(**kwargs)


def build_model(config) -> nn.Module:
    return family_of(config).model_cls(config)


def config_to_dict(config) -> dict[str, Any]:
    return {"architecture": family_of(config).name, **dataclasses.asdict(config)}


def config_from_dict(data: dict[str, Any]):
    data = dict(data)
    architecture = data.pop("architecture", None)
    if architecture is None:
        raise ValueError("model config has no 'architecture' field")
    return make_config(architecture, **data)


def model_config(name: str, **overrides):
    """A registered model's config (with timm-named overrides), without building the model."""
    return make_config(model_architecture(name), **{**_MODELS[name][1], **overrides})


def create_model(name: str, *, num_classes: int | None = None, img_size: int | None = None,
                 in_chans: int | None = None, drop_path_rate: float | None = None, **overrides) -> nn.Module:
    """Build a registered model with random weights; `overrides` use timm's constructor argument names, and
    an argument the family does not take is named with the valid ones. (`vitkit.create_model` also takes
    `checkpoint=`: weights live a package above models.)"""
    named = {"num_classes": num_classes, "img_size": img_size, "in_chans": in_chans, "drop_path_rate": drop_path_rate}
    model = build_model(model_config(name, **{k: v for k, v in named.items() if v is not None}, **overrides))
    model.model_name = name
    model.pretrained_cfg = pretrained_cfg(name)
    return model
