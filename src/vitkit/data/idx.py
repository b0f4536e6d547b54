"""MNIST-family datasets stored as IDX files (http://yann.lecun.com/exdb/mnist/ describes the format)."""

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import DatasetInfo, InMemoryImageDataset

UNSIGNED_BYTE = 0x08  # the only IDX element type MNIST-family files use
FILE_PREFIX = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class IdxFamily:
    name: str
    class_names: tuple[str, ...]
    mean: float  # published train-split statistics
    std: float
    default_root: Path | None = None
    install_hint: str = ""


FASHION_MNIST = IdxFamily(
    name="fashion-mnist",
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    mean=0.2860,
    std=0.3530,
    default_root=Path("/usr/share/datasets/fashion-mnist"),
    install_hint="`apt-get install dataset-fashion-mnist` provides it in /usr/share/datasets/fashion-mnist",
)
MNIST = IdxFamily(name="mnist", class_names=tuple("0123456789"), mean=0.1307, std=0.3081)


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (raw or gzipped) of unsigned bytes, checking its size against its header."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: damaged gzip file ({e})") from e
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise ValueError(f"{path}: not an IDX file (its first two bytes must be zero)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != UNSIGNED_BYTE:
        raise ValueError(f"{path}: IDX element type 0x{dtype_code:02x} is unsupported (only 0x08, ubyte)")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(f"{path}: truncated IDX header, expected {header_size} bytes, got {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = header_size + math.prod(dims)
    if len(data) != expected:
        raise ValueError(f"{path}: IDX header declares shape {dims}, which needs {expected} bytes, "
                         f"but the file has {len(data)} bytes (truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims).copy()


def find_idx_file(root: Path, stem: str, family: IdxFamily) -> Path:
    hint = f"; {family.install_hint}" if family.install_hint else ""
    if not root.is_dir():
        raise FileNotFoundError(f"{family.name}: directory {root} does not exist{hint}")
    candidates = [root / stem, root / f"{stem}.gz"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{family.name}: found neither {candidates[0]} nor {candidates[1]}{hint}")


def load_idx_dataset(root: str | Path | None, split: str, family: IdxFamily) -> InMemoryImageDataset:
    root = Path(root).expanduser() if root else family.default_root
    prefix = FILE_PREFIX[split]
    images_path = find_idx_file(root, f"{prefix}-images-idx3-ubyte", family)
    labels_path = find_idx_file(root, f"{prefix}-labels-idx1-ubyte", family)
    images, labels = read_idx(images_path), read_idx(labels_path)

    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"expected (N, H, W) images in {images_path} and (N,) labels in {labels_path}, "
                         f"got shapes {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"image/label count mismatch: {len(images)} images in {images_path}, "
                         f"{len(labels)} labels in {labels_path}")
    num_classes = len(family.class_names)
    if len(labels) and labels.max() >= num_classes:
        raise ValueError(f"{labels_path}: label {labels.max()} is out of range for {num_classes} classes")

    info = DatasetInfo(
        name=family.name,
        num_classes=num_classes,
        class_names=family.class_names,
        in_chans=1,
        img_size=images.shape[1],
        mean=(family.mean,),
        std=(family.std,),
    )
    return InMemoryImageDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels), info)
