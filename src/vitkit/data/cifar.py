"""CIFAR-10 and CIFAR-100 from the "python version" pickle batches (https://www.cs.toronto.edu/~kriz/cifar.html)."""

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import DatasetInfo, InMemoryImageDataset


@dataclass(frozen=True)
class CifarLayout:
    name: str
    files: dict[str, tuple[str, ...]]  # split -> batch files
    meta_file: str
    label_key: str
    names_key: str
    mean: tuple[float, float, float]  # published train-split statistics
    std: tuple[float, float, float]


CIFAR10 = CifarLayout(
    name="cifar10",
    files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarLayout(
    name="cifar100",
    files={"train": ("train",), "test": ("test",)},
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)

# Everything a batch file legitimately references. Refusing all other globals means a tampered
# file cannot run code the way an unrestricted pickle.load would let it.
SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),  # files written by numpy 1.x, like the official ones
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
    ("_codecs", "encode"),  # bytes in protocol 2 pickles written by Python 3
}


class BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches never contain it")
        return super().find_class(module, name)


def load_batch(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch file {path} does not exist")
    with path.open("rb") as f:
        # the official files come from Python 2: latin1 turns their byte-string keys into str, arrays intact
        return BatchUnpickler(f, encoding="latin1").load()


def load_cifar(root: str | Path, split: str, layout: CifarLayout) -> InMemoryImageDataset:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{layout.name}: directory {root} does not exist (expected the extracted "
                                f"python-version batches: {', '.join(layout.files['train'])}, ...)")
    class_names = tuple(load_batch(root / layout.meta_file)[layout.names_key])
    images, labels = [], []
    for file_name in layout.files[split]:
        batch = load_batch(root / file_name)
        data, batch_labels = np.asarray(batch["data"], dtype=np.uint8), np.asarray(batch[layout.label_key])
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
            raise ValueError(f"{root / file_name}: expected (N, 3072) data and N labels, "
                             f"got data {data.shape} and {len(batch_labels)} labels")
        if len(batch_labels) and not 0 <= batch_labels.min() <= batch_labels.max() < len(class_names):
            raise ValueError(f"{root / file_name}: labels must lie in [0, {len(class_names)}), "
                             f"found {batch_labels.min()}..{batch_labels.max()}")
        images.append(data.reshape(-1, 3, 32, 32))  # rows store the red, green, then blue 32x32 planes
        labels.append(batch_labels)

    info = DatasetInfo(
        name=layout.name,
        num_classes=len(class_names),
        class_names=class_names,
        in_chans=3,
        img_size=32,
        mean=layout.mean,
        std=layout.std,
    )
    labels = np.concatenate(labels).astype(np.int64)
    return InMemoryImageDataset(torch.from_numpy(np.concatenate(images)), torch.from_numpy(labels), info)
