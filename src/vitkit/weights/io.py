"""Reading weight files with clear errors, and writing files atomically."""

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Keys under which training scripts (timm's train.py, DeiT, MAE, vitkit's trainer) nest the weights.
NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
NEARLY_FULL_BYTES = 16 << 20
MAX_NESTING = 8  # real checkpoints nest the weights one or two levels deep


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
    except RecursionError as err:
        raise CorruptCheckpointError(
            f"{path} is nested too deeply to read (corrupt or hostile checkpoint); expected a state dict of tensors, "
            "at most a few dicts deep"
        ) from err
    except Exception as err:  # torch raises many types for damaged zips and pickles
        raise CorruptCheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {err}"
        ) from err
    return unwrap_state_dict(obj, path, prefer_ema)


def unwrap_state_dict(obj, path, prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    keys = NESTED_KEYS if prefer_ema else NESTED_KEYS[2:]
    seen: set[int] = set()  # ids of the dicts passed through: a pickle can make a dict hold itself
    while isinstance(obj, dict) and not _is_state_dict(obj):
        nested = next((k for k in keys if k in obj and isinstance(obj[k], dict)), None)
        if nested is None:
            raise CorruptCheckpointError(
                f"{path} holds a dict without model weights; top-level keys: {sorted(map(str, obj))[:10]}"
            )
        seen.add(id(obj))
        if id(obj[nested]) in seen:
            raise CorruptCheckpointError(
                f"{path} refers to itself: its {nested!r} entry contains the dict that holds it; expected the "
                "weights nested under 'model' or 'state_dict' at most a few levels deep"
            )
        if len(seen) > MAX_NESTING:
            raise CorruptCheckpointError(
                f"{path} is nested more than {MAX_NESTING} levels deep (dicts within dicts); expected the weights "
                "nested under 'model' or 'state_dict' at most a few levels deep"
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
    """Call write(tmp_path) then rename over `path`, so a crash never leaves a half-written file.

    The file gets the permissions a plain open() would give (0666 less the umask), not mkstemp's 0600;
    a full disk is reported as such, naming the file, and the previous file stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(err, path.parent):
            raise OSError(errno.ENOSPC, f"cannot write {path}: the disk is full (no space left on device); "
                          f"free some space and run again (the previous {path.name}, if any, is intact)") from err
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _is_disk_full(err: BaseException, directory: Path) -> bool:
    """ENOSPC / EDQUOT raised directly or wrapped; writers that hide the errno (torch.save raises a
    RuntimeError about stream positions) count when the directory's file system is (nearly) full."""
    cause = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, OSError | RuntimeError):
        try:
            return shutil.disk_usage(directory).free < NEARLY_FULL_BYTES
        except OSError:
            return False
    return False


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata=None) -> None:
    # safetensors refuses shared or non-contiguous storage; clone makes each tensor its own.
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
