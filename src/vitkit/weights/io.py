"""Reading weight files with clear errors, and writing files atomically."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Keys under which training scripts (timm's train.py, DeiT, MAE, vitkit's trainer) nest the weights.
NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


class CorruptCheckpointError(ValueError):
    """A weights file that cannot be read: truncated, corrupt or of an unknown format."""


def read_state_dict(path: str | os.PathLike, prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"{path}: unknown weights format {path.suffix!r}; expected one of {WEIGHT_SUFFIXES}")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError, RuntimeError) as err:
            raise CorruptCheckpointError(
                f"{path} is not a readable safetensors file (truncated or corrupt?): {err}"
            ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged zips and pickles
        raise CorruptCheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {err}"
        ) from err
    return unwrap_state_dict(obj, path, prefer_ema)


def unwrap_state_dict(obj, path, prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    keys = NESTED_KEYS if prefer_ema else NESTED_KEYS[2:]
    while isinstance(obj, dict) and not _is_state_dict(obj):
        nested = next((k for k in keys if k in obj and isinstance(obj[k], dict)), None)
        if nested is None:
            raise CorruptCheckpointError(
                f"{path} holds a dict without model weights; top-level keys: {sorted(obj)[:10]}"
            )
        obj = obj[nested]
    if not isinstance(obj, dict):
        raise CorruptCheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    # DataParallel / DDP / torch.compile wrappers prefix every key.
    for prefix in ("module.", "_orig_mod."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) then rename over `path`, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata=None) -> None:
    # safetensors refuses shared or non-contiguous storage; clone makes each tensor its own.
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
