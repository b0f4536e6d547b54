"""Hugging Face `save_pretrained` directories in, and transformers models out (the bench's peer).

The file format is handled here; the names and configs are each family's (`Family.from_hf`,
`Family.transformers_peer`, registered from `models/<family>/`)."""

import json
from pathlib import Path

import torch

from ..models import family_of, hf_converter, hf_model_types


def is_hf_directory(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "model_type" in data


def read_hf_directory(path: Path) -> tuple[dict, object, dict[str, torch.Tensor]]:
    """(HF config.json, vitkit config, vitkit-keyed state dict) of a `save_pretrained` directory, converted
    by the family that registered its `model_type`."""
    from .io import read_state_dict

    config_path = path / "config.json"
    try:
        hf_config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    model_type = hf_config.get("model_type") if isinstance(hf_config, dict) else None
    convert = hf_converter(model_type) if isinstance(model_type, str) else None
    if convert is None:
        raise ValueError(f"{config_path}: Hugging Face model_type {model_type!r} is not one vitkit converts; "
                         f"handled: {', '.join(hf_model_types())}")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            config, state_dict = convert(hf_config, read_state_dict(path / name))
            return hf_config, config, state_dict
    raise FileNotFoundError(f"{path} has a Hugging Face config.json but no model.safetensors or pytorch_model.bin")


def transformers_config(config) -> tuple[str, dict]:
    """(transformers class name, config dict) of the transformers model equal to a vitkit config; a
    ValueError saying why when there is none."""
    peer = family_of(config).transformers_peer
    if peer is None:
        raise ValueError(f"transformers has no model equal to vitkit's {family_of(config).name} family")
    class_name, hf_config, _ = peer(config)
    return class_name, hf_config


def to_transformers(model) -> torch.nn.Module:
    """The transformers model equal to a vitkit model, with its weights, in eval mode.

    Goes through a saved checkpoint so transformers' own loader maps the names, whatever its version."""
    import tempfile

    import transformers
    from safetensors.torch import save_file

    peer = family_of(model).transformers_peer
    if peer is None:
        raise ValueError(f"transformers has no model equal to vitkit's {family_of(model).name} family")
    class_name, hf_config, convert = peer(model.config)
    weights = convert({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    cls = getattr(transformers, class_name)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(hf_config))
        save_file(weights, str(Path(tmp) / "model.safetensors"))
        return cls.from_pretrained(tmp).eval()


def preprocessor_cfg(path: Path) -> dict:
    """The normalisation (and ConvNeXt's crop_pct) a Hugging Face directory's preprocessor_config.json
    records, as a vitkit pretrained cfg; empty when there is none or it is unreadable or implausible."""
    try:
        data = json.loads((path / "preprocessor_config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    cfg = {}
    for ours, theirs in (("mean", "image_mean"), ("std", "image_std")):
        value = data.get(theirs)
        if (isinstance(value, list) and 0 < len(value) <= 16
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
            cfg[ours] = tuple(float(v) for v in value)
    if "std" in cfg and min(cfg["std"]) <= 0:
        del cfg["std"]
    crop = data.get("crop_pct")
    if isinstance(crop, int | float) and not isinstance(crop, bool) and 0 < crop <= 1:
        cfg["crop_pct"] = float(crop)
    return cfg
