"""Put weights into a model, and vitkit's own save / load format (model.safetensors + config.json)."""

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import build_model, config_from_dict, config_to_dict
from .hf import convert_hf_state_dict, is_hf_directory, is_hf_state_dict, read_hf_directory
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


# A config.json is data from wherever the directory came from: the fields that decide how much memory the
# model takes are bounded (the largest published ViTs are well inside) before anything is built.
CONFIG_INT_RANGES = {  # per stage for hierarchical families (depths, dims, num_heads of Swin / ConvNeXt)
    "img_size": (1, 8192), "patch_size": (1, 1024), "in_chans": (1, 1024), "num_classes": (0, 1_000_000),
    "embed_dim": (1, 16384), "depth": (1, 512), "num_heads": (1, 1024), "reg_tokens": (0, 1024),
    "depths": (0, 512), "dims": (1, 16384), "window_size": (1, 1024),
}
MAX_STAGES = 8
MAX_PATCH_TOKENS = 2**16  # a 256 x 256 patch grid
MAX_MLP_RATIO = 64.0
MAX_CONV_STAGES = 8
# strict=False leaves the model tensors the weights do not supply as initialised; beyond this many elements
# (and beyond 4x what the file holds) the config is taken to be corrupt or hostile rather than a partial fit
MAX_UNSUPPLIED_ELEMENTS = 2**26


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value) -> str:
    """repr for an error message, cut short: a hostile value may be megabytes long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:50] + f"... ({len(text)} characters)"


def check_config_ranges(data: dict[str, Any], source: str) -> None:
    """Refuse sizes no real ViT has (depth=1000000, embed_dim=10**7) before any memory is allocated."""
    def fail(key: str, expected: str):
        raise ValueError(f"{source}: {key}={_shown(data[key])} is out of range; expected {expected}")

    for key, (low, high) in CONFIG_INT_RANGES.items():
        value = data.get(key)
        values = value if isinstance(value, list | tuple) and 0 < len(value) <= MAX_STAGES else [value]
        if key in data and not all(_is_int(v) and low <= v <= high for v in values):
            fail(key, f"an integer from {low} to {high} (or one per stage, at most {MAX_STAGES} stages)")
    if "mlp_ratio" in data and not (_is_number(data["mlp_ratio"]) and 0 < data["mlp_ratio"] <= MAX_MLP_RATIO):
        fail("mlp_ratio", f"a number in (0, {MAX_MLP_RATIO:g}]")
    for key, allowed in (("conv_stem", "channel counts from 1 to 16384"), ("conv_stem_strides", "strides 1 or 2")):
        value = data.get(key, ())
        low, high = (1, 16384) if key == "conv_stem" else (1, 2)
        if not (isinstance(value, list | tuple) and len(value) <= MAX_CONV_STAGES
                and all(_is_int(v) and low <= v <= high for v in value)):
            fail(key, f"a list of at most {MAX_CONV_STAGES} {allowed}")
    img_size, conv_stem = data.get("img_size", 224), data.get("conv_stem", ())
    if conv_stem:
        stride, grid = None, img_size
        for s in data.get("conv_stem_strides") or (2,) * len(conv_stem):
            grid = (grid + s - 1) // s
    else:
        stride = data.get("patch_size", 16)
        grid = img_size // stride
    if grid * grid > MAX_PATCH_TOKENS:
        made_by = f"patch_size={stride}" if stride else "its conv_stem"
        raise ValueError(f"{source}: img_size={img_size} with {made_by} makes {grid * grid} patch tokens; expected "
                         f"at most {MAX_PATCH_TOKENS} (a {math.isqrt(MAX_PATCH_TOKENS)}x"
                         f"{math.isqrt(MAX_PATCH_TOKENS)} grid)")


def check_metadata(metadata, source: str, num_classes: int | None = None, in_chans: int | None = None) -> None:
    """The saved values inference uses must be usable: mean / std (one per channel, std > 0), crop_pct in
    (0, 1] and one class name per class."""
    if not isinstance(metadata, dict):
        raise ValueError(f"{source}: metadata must be a JSON object, got {type(metadata).__name__}")
    for key in ("mean", "std"):
        value = metadata.get(key)
        if value is None or value == []:
            continue
        if not (isinstance(value, list | tuple) and all(_is_number(v) for v in value)):
            raise ValueError(f"{source}: metadata {key}={_shown(value)} is invalid; expected a list of finite numbers, "
                             "one per input channel")
        if in_chans is not None and len(value) not in (1, in_chans):
            raise ValueError(f"{source}: metadata {key} has {len(value)} values; expected one per input channel "
                             f"(in_chans={in_chans}) or a single value")
        if key == "std" and any(v <= 0 for v in value):
            raise ValueError(f"{source}: metadata std={_shown(list(value))} is invalid; expected every value > 0 "
                             "(the pixels are divided by it)")
    crop_pct = metadata.get("crop_pct")
    if crop_pct is not None and not (_is_number(crop_pct) and 0 < crop_pct <= 1):
        raise ValueError(f"{source}: metadata crop_pct={_shown(crop_pct)} is out of range; expected a number in "
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
    return convert_hf_state_dict(state_dict) if is_hf_state_dict(state_dict) else state_dict


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


def load(directory: str | os.PathLike, strict: bool = True, optimized: bool = True, **overrides) -> nn.Module:
    """Rebuild a model saved by `save` (or a Hugging Face ViT/DeiT directory); `overrides` change the
    config, e.g. img_size=384 resamples the position embedding.

    A directory written by `vitkit optimize` holds the float weights and the spec; the spec is applied
    on load unless `optimized=False`.
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
    spec = (metadata or {}).get("optimize")
    if spec and optimized:
        from ..efficiency import optimize

        model = optimize(model.eval(), spec)
        model.model_name, model.metadata = name, metadata
    return model
