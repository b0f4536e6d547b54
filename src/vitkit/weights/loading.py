"""Put weights into a model, and vitkit's own save / load format (model.safetensors + config.json)."""

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import build_model, config_from_dict, config_to_dict
from .hf import config_from_hf, convert_hf_state_dict, is_hf_directory, is_hf_state_dict, read_hf_directory
from .io import atomic_write_text, read_state_dict, save_safetensors

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
    if hasattr(model, "adapt_state_dict"):
        state_dict = model.adapt_state_dict(state_dict)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    mismatched = sorted(
        f"{k} (checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in state_dict.items() if k in own and v.shape != own[k].shape
    )
    if strict and (missing or unexpected or mismatched):
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
    fitting = {k: v for k, v in state_dict.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(fitting, strict=False)
    if missing or unexpected or mismatched:
        warnings.warn(
            f"{source}: loaded {len(fitting)} tensors; left {len(missing) + len(mismatched)} model tensors as "
            f"initialised (missing: {missing[:5]}, mismatched: {mismatched[:5]}), ignored unexpected: {unexpected[:5]}",
            stacklevel=2,
        )
    return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Any supported checkpoint as a vitkit/timm-keyed state dict."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors").is_file() and _is_vitkit_directory(path):
            return read_state_dict(path / "model.safetensors")
        if is_hf_directory(path):
            return read_hf_directory(path)[1]
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
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} has no config.json; expected a directory written by vitkit.save")
    raw = json.loads((directory / "config.json").read_text())
    if "vitkit_format" in raw:
        config = config_from_dict({**raw["config"], **overrides})
        state_dict = read_state_dict(directory / "model.safetensors")
        name, metadata = raw.get("model_name"), raw.get("metadata", {})
    elif "model_type" in raw:
        hf_config, state_dict = read_hf_directory(directory)
        config = config_from_dict({**config_to_dict(config_from_hf(hf_config)), **overrides})
        name, metadata = None, {"id2label": hf_config.get("id2label")}
    else:
        raise ValueError(f"{directory / 'config.json'} is neither a vitkit nor a Hugging Face model config")
    model = build_model(config)
    load_state_dict(model, state_dict, strict=strict, source=str(directory))
    model.model_name, model.metadata = name, metadata
    spec = (metadata or {}).get("optimize")
    if spec and optimized:
        from ..efficiency import optimize

        model = optimize(model.eval(), spec)
        model.model_name, model.metadata = name, metadata
    return model
