"""Named model configs and `create_model`, following timm's names and arguments."""

import dataclasses
import difflib
import fnmatch
from typing import Any

from torch import nn

_ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {}  # architecture -> (config class, model class)
_MODELS: dict[str, tuple[str, dict[str, Any]]] = {}  # model name -> (architecture, config kwargs)


def register_architecture(name: str, config_cls: type, model_cls: type[nn.Module]) -> None:
    _ARCHITECTURES[name] = (config_cls, model_cls)


# Hugging Face model_type -> function(hf_config: dict, hf_state_dict) -> (vitkit config, vitkit-keyed state dict).
# Each family registers its own converter next to its model (models/<family>/convert.py); ViT and DeiT are
# converted by weights/hf.py.
_HF_CONVERTERS: dict[str, Any] = {}


def register_hf_converter(model_types: tuple[str, ...], convert) -> None:
    for model_type in model_types:
        _HF_CONVERTERS[model_type] = convert


def hf_converter(model_type: str):
    """The registered converter for a Hugging Face `model_type`, or None."""
    return _HF_CONVERTERS.get(model_type)


def hf_model_types() -> list[str]:
    return sorted(_HF_CONVERTERS)


def register_model(name: str, architecture: str, **config_kwargs) -> None:
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = (architecture, config_kwargs)


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
    if architecture not in _ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(_ARCHITECTURES)}")
    config_cls = _ARCHITECTURES[architecture][0]
    valid = [f.name for f in dataclasses.fields(config_cls)]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        hints = [f"{k} (did you mean {', '.join(difflib.get_close_matches(k, valid, n=2))}?)" for k in unknown]
        raise ValueError(f"unknown {architecture} argument(s): {', '.join(hints)}; valid: {', '.join(valid)}")
    return config_cls(**kwargs)


def build_model(config) -> nn.Module:
    for config_cls, model_cls in _ARCHITECTURES.values():
        if type(config) is config_cls:
            return model_cls(config)
    raise TypeError(f"no architecture is registered for config type {type(config).__name__}")


def config_to_dict(config) -> dict[str, Any]:
    architecture = next(a for a, (cls, _) in _ARCHITECTURES.items() if type(config) is cls)
    return {"architecture": architecture, **dataclasses.asdict(config)}


def config_from_dict(data: dict[str, Any]):
    data = dict(data)
    architecture = data.pop("architecture", None)
    if architecture is None:
        raise ValueError("model config has no 'architecture' field")
    return make_config(architecture, **data)


def model_config(name: str, **overrides):
    """A registered model's config (with timm-named overrides), without building the model."""
    return make_config(model_architecture(name), **{**_MODELS[name][1], **overrides})


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    drop_path_rate: float | None = None,
    checkpoint: str | None = None,
    strict: bool = True,
    **overrides,
) -> nn.Module:
    """Build a registered model; `overrides` use timm's constructor argument names.

    `checkpoint` may be a vitkit directory, a Hugging Face `save_pretrained` directory, or a
    timm/vitkit-keyed `.safetensors` / `.pth` file. Position embeddings are resampled and
    input channels adapted when the checkpoint was made for another size.
    """
    named = {"num_classes": num_classes, "img_size": img_size, "in_chans": in_chans, "drop_path_rate": drop_path_rate}
    model = build_model(model_config(name, **{k: v for k, v in named.items() if v is not None}, **overrides))
    model.model_name = name
    if checkpoint is not None:
        from ..weights import load_checkpoint

        load_checkpoint(model, checkpoint, strict=strict)
    return model
