"""Put weights into a model, and vitkit's own save / load format (model.safetensors + config.json)."""

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import build_model, config_from_dict, config_to_dict, families, family_named, list_models, pretrained_cfg
from ..models import create_model as models_create_model
from ..models._limits import COMMON_LIMITS, check_int_limits, is_number, shown
from .hf import is_hf_directory, preprocessor_cfg, read_hf_directory
from .io import CorruptCheckpointError, atomic_write_text, read_state_dict, save_safetensors

FORMAT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model; the message lists every problem at once."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str], mismatched: list[str]):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"{source} does not fit the model:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                lines.append(f"  {title} ({len(keys)}): {shown}")
        lines.append("  (pass strict=False to load the tensors that fit and keep the rest as initialised)")
        super().__init__("\n".join(lines))


def load_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True,
                    source: str = "checkpoint") -> dict[str, list[str]]:
    """Load after adapting sizes; report missing, unexpected and shape-mismatched keys together."""
    state_dict, own, (missing, unexpected, mismatched) = _match(model, state_dict, strict, source)
    fitting = {k: v for k, v in state_dict.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(fitting, strict=False)
    if missing or unexpected or mismatched:
        warnings.warn(
            f"{source}: loaded {len(fitting)} tensors; left {len(missing) + len(mismatched)} model tensors as "
            f"initialised (missing: {missing[:5]}, mismatched: {mismatched[:5]}), ignored unexpected: {unexpected[:5]}",
            stacklevel=2,
        )
    return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}


def _match(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool, source: str):
    """(adapted state dict, the model's own state dict, (missing, unexpected, mismatched)); with `strict`,
    any problem raises one CheckpointMismatchError listing them all."""
    if hasattr(model, "adapt_state_dict"):
        state_dict = model.adapt_state_dict(state_dict)
    own = model.state_dict()
    problems = _compare(own, state_dict)
    if strict and any(problems):
        raise CheckpointMismatchError(source, *problems)
    return state_dict, own, problems


def _compare(own: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor]) -> tuple[list, list, list]:
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    mismatched = sorted(
        f"{k} (checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in state_dict.items() if k in own and v.shape != own[k].shape
    )
    return missing, unexpected, mismatched


# strict=False leaves the model tensors the weights do not supply as initialised; beyond this many elements
# (and beyond 4x what the file holds) the config is taken to be corrupt or hostile rather than a partial fit
MAX_UNSUPPLIED_ELEMENTS = 2**26


def check_config_ranges(data: dict[str, Any], source: str) -> None:
    """Refuse sizes no real model has (depth=1000000, embed_dim=10**7) before any memory is allocated: the
    bounds every family shares, then the family's own (`Family.config_limits`, `Family.check_config`)."""
    architecture = data.get("architecture")
    if not isinstance(architecture, str) or architecture not in {f.name for f in families()}:
        raise ValueError(f"{source}: architecture={shown(architecture)} is not a vitkit family; expected one of "
                         f"{sorted(f.name for f in families())}")
    family = family_named(architecture)
    check_int_limits(data, {**COMMON_LIMITS, **family.config_limits}, source, optional=("img_size",))
    if family.check_config is not None:
        family.check_config(data, source)


def check_metadata(metadata, source: str, num_classes: int | None = None, in_chans: int | None = None) -> None:
    """The saved values inference uses must be usable: mean / std (one per channel, std > 0), crop_pct in
    (0, 1] and one class name per class."""
    if not isinstance(metadata, dict):
        raise ValueError(f"{source}: metadata must be a JSON object, got {type(metadata).__name__}")
    for key in ("mean", "std"):
        value = metadata.get(key)
        if value is None or value == []:
            continue
        if not (isinstance(value, list | tuple) and all(is_number(v) for v in value)):
            raise ValueError(f"{source}: metadata {key}={shown(value)} is invalid; expected a list of finite numbers, "
                             "one per input channel")
        if in_chans is not None and len(value) not in (1, in_chans):
            raise ValueError(f"{source}: metadata {key} has {len(value)} values; expected one per input channel "
                             f"(in_chans={in_chans}) or a single value")
        if key == "std" and any(v <= 0 for v in value):
            raise ValueError(f"{source}: metadata std={shown(list(value))} is invalid; expected every value > 0 "
                             "(the pixels are divided by it)")
    crop_pct = metadata.get("crop_pct")
    if crop_pct is not None and not (is_number(crop_pct) and 0 < crop_pct <= 1):
        raise ValueError(f"{source}: metadata crop_pct={shown(crop_pct)} is out of range; expected a number in "
                         "(0, 1]")
    names = metadata.get("class_names")
    if names is not None:
        if not (isinstance(names, list | tuple) and all(isinstance(n, str) for n in names)):
            raise ValueError(f"{source}: metadata class_names is invalid; expected a list of strings, one per class")
        if num_classes and len(names) != num_classes:
            raise ValueError(f"{source}: metadata class_names has {len(names)} names but the model has "
                             f"num_classes={num_classes}; expected one name per class")


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's header, without reading the tensors."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CorruptCheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {err}"
        ) from err


def check_fits(config, shapes: dict[str, tuple[int, ...]], strict: bool, source: str, weights: str) -> None:
    """Compare the model `config` describes with the weights' shapes as `load_state_dict` would (after
    `adapt_state_dict`), on the meta device: no memory is allocated, so a config.json that does not
    describe its weights fails here rather than by running out of memory."""
    with torch.device("meta"):
        model = build_model(config)
        state_dict = {k: torch.empty(shape) for k, shape in shapes.items()}
        state_dict, own, _ = _match(model, state_dict, strict, source)
    supplied = {k for k, v in state_dict.items() if k in own and v.shape == own[k].shape}
    unsupplied = sum(v.numel() for k, v in own.items() if k not in supplied)
    in_file = sum(math.prod(shape) for shape in shapes.values())
    if unsupplied > max(4 * in_file, MAX_UNSUPPLIED_ELEMENTS):
        raise ValueError(f"{source}: the config describes {unsupplied:,} parameters that {weights} does not "
                         f"supply (it holds {in_file:,}); expected a config that fits its weights, refusing to "
                         "build the model (corrupt or hostile config.json?)")


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Any supported checkpoint as a vitkit/timm-keyed state dict."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors").is_file() and _is_vitkit_directory(path):
            return read_state_dict(path / "model.safetensors")
        if is_hf_directory(path):
            return read_hf_directory(path)[2]
        raise ValueError(f"{path} is neither a vitkit model directory (config.json + model.safetensors) "
                         "nor a Hugging Face save_pretrained directory")
    state_dict = read_state_dict(path)
    return state_dict  # other names (Hugging Face's, older timm layouts) are the model's adapt_state_dict's


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, list[str]]:
    return load_state_dict(model, read_checkpoint(path), strict=strict, source=str(path))


def _is_vitkit_directory(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and "vitkit_format" in json.loads(config.read_text())


def save(model: nn.Module, directory: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` and `config.json` (config plus optional metadata such as class names)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(model.state_dict(), directory / "model.safetensors")
    config = {
        "vitkit_format": FORMAT_VERSION,
        "model_name": getattr(model, "model_name", None),
        "config": config_to_dict(model.config),
        "metadata": metadata or {},
    }
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2) + "\n")
    return directory


def load(directory: str | os.PathLike, strict: bool = True, **overrides) -> nn.Module:
    """Rebuild a model saved by `save` (or a Hugging Face `save_pretrained` directory of a model type some
    family converts); `overrides` change the config, e.g. img_size=384 resamples the position embedding.

    The float model: a directory written by `vitkit optimize` also holds its spec (`metadata["optimize"]`),
    which `vitkit.load` applies and this function, below the efficiency package, does not.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no config.json; expected a directory written by vitkit.save")
    try:
        raw = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{config_path} holds a JSON {type(raw).__name__}; expected an object")
    # Nothing in config.json is trusted: sizes are bounded, and the model it describes is compared with the
    # weights file's tensor shapes on the meta device, before the real model is allocated.
    if "vitkit_format" in raw:
        if not isinstance(raw.get("config"), dict):
            raise ValueError(f"{config_path}: 'config' must be a JSON object with the model's config")
        saved = raw["config"]
        weights = directory / "model.safetensors"
        shapes = _safetensors_shapes(weights)
        name, metadata = raw.get("model_name"), raw.get("metadata") or {}
    elif "model_type" in raw:
        hf_config, hf_vitkit_config, state_dict = read_hf_directory(directory)
        saved = config_to_dict(hf_vitkit_config)
        weights = directory
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        name, metadata = None, {"id2label": hf_config.get("id2label")}
    else:
        raise ValueError(f"{config_path} is neither a vitkit nor a Hugging Face model config")
    label = str(config_path) if "vitkit_format" in raw else f"{config_path} (in vitkit's terms)"
    check_config_ranges(saved, label)
    if overrides:
        check_config_ranges({**saved, **overrides}, f"{label} with overrides {overrides}")
    config = config_from_dict({**saved, **overrides})
    if "vitkit_format" in raw:
        check_metadata(metadata, str(config_path), num_classes=saved.get("num_classes"), in_chans=saved.get("in_chans"))
    check_fits(config, shapes, strict, str(directory), str(weights))
    if "vitkit_format" in raw:
        state_dict = read_state_dict(weights)
    model = build_model(config)
    load_state_dict(model, state_dict, strict=strict, source=str(directory))
    model.model_name, model.metadata = name, metadata
    # what the weights expect as input: the registered name's cfg, what training recorded, or Hugging Face's
    # preprocessor_config.json (the model's input_spec reports it)
    cfg = pretrained_cfg(name) if isinstance(name, str) and name in list_models() else {}
    if "model_type" in raw:
        cfg = preprocessor_cfg(directory)
    cfg.update({k: metadata[k] for k in ("mean", "std", "crop_pct") if metadata.get(k) is not None})
    model.pretrained_cfg = cfg
    return model


def create_model(name: str, *, checkpoint: str | os.PathLike | None = None, strict: bool = True,
                 **kwargs) -> nn.Module:
    """`vitkit.models.create_model` (a registered name, timm's constructor arguments as overrides), then
    the weights of `checkpoint` if given: a vitkit directory, a Hugging Face `save_pretrained` directory,
    or a timm/vitkit-keyed `.safetensors` / `.pth` file. Position embeddings are resampled and input
    channels adapted when the checkpoint was made for another size."""
    model = models_create_model(name, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=strict)
    return model
