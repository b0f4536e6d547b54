"""Features on disk, so a second probe of the same backbone runs no forward pass.

An entry is one safetensors file named by the hash of its key: the weights' hash, the dataset (name, split
and a hash of its images and labels), the eval transform, the blocks taken and the storage dtype. The key
is also written inside the file and compared on every read: a file holding another backbone's features
is an error naming it; a truncated or unreadable file, or one written by another format version, is
recomputed (and rewritten atomically), never read.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..weights.io import atomic_write

FORMAT = "vitkit-features/1"
FEATURE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def default_cache_dir() -> Path:
    if os.environ.get("VITKIT_CACHE_DIR"):
        return Path(os.environ["VITKIT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitkit" / "features"


def _update(digest, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous().reshape(-1)
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes, values): the same weights in any file
    or format give the same hash, other weights another."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        _update(digest, tensor)
    return digest.hexdigest()


def dataset_hash(dataset) -> str:
    """sha256 of a split's images and labels (in-memory datasets), or of its files' paths, sizes, times and
    labels (folders): features of changed data are not taken from the cache."""
    digest = hashlib.sha256()
    if hasattr(dataset, "images"):
        _update(digest, dataset.images)
    else:
        for path, label in dataset.samples:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
    _update(digest, torch.as_tensor(dataset.targets))
    return digest.hexdigest()


class FeatureCache:
    def __init__(self, root: str | os.PathLike | None = None, log=None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.log = log or (lambda message: print(message, file=sys.stderr))

    def path(self, key: dict) -> Path:
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.root / f"{name}.safetensors"

    def load(self, key: dict, num_images: int) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None when there is none or it cannot be trusted (then it is recomputed)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                self.log(f"warning: feature cache {path} was written by another version ({meta.get('format')!r}, "
                         f"expected {FORMAT!r}): recomputing it")
                return None
            stored = json.loads(meta.get("key", "null"))
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            self.log(f"warning: feature cache {path} is unreadable ({str(err).splitlines()[0][:120]}): recomputing it")
            return None
        if stored != key:
            differs = sorted(k for k in set(key) | set(stored or {}) if (stored or {}).get(k) != key.get(k))
            raise ValueError(f"feature cache {path} holds features of another {'/'.join(differs)} than asked "
                             f"(its key: weights {str((stored or {}).get('weights'))[:12]}..., dataset "
                             f"{(stored or {}).get('dataset')}); the cache is mixed up: delete that file or give "
                             "another --cache-dir")
        problem = _check_entry(tensors, num_images)
        if problem:
            self.log(f"warning: feature cache {path} is corrupt ({problem}): recomputing it")
            return None
        return as_read(tensors)

    def save(self, key: dict, tensors: dict[str, torch.Tensor], dtype: str = "float32") -> Path:
        path = self.path(key)
        stored = as_stored(tensors, dtype)
        metadata = {"format": FORMAT, "key": json.dumps(key, sort_keys=True)}
        atomic_write(path, lambda tmp: save_file(stored, tmp, metadata=metadata))
        return path


def as_stored(tensors: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Features in the storage dtype (labels, ids and other integer tensors as they are): what an entry holds."""
    return {k: (v.to(FEATURE_DTYPES[dtype]) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}


def as_read(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An entry's tensors as the probes use them: features in float32."""
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def _check_entry(tensors: dict[str, torch.Tensor], num_images: int) -> str | None:
    if "labels" not in tensors or "pooled" not in tensors:
        return f"missing tensors: has {sorted(tensors)}"
    for name, t in tensors.items():
        if len(t) != num_images:
            return f"{name} has {len(t)} rows, the split has {num_images} images"
        if name != "labels" and not torch.isfinite(t).all():
            return f"{name} holds non-finite values"
    if tensors["labels"].dtype != torch.int64:
        return f"labels are {tensors['labels'].dtype}, expected int64"
    return None
