"""The image sets a trust report runs a model on, besides the dataset's own validation and test splits:
corrupted copies of the test split, and out-of-distribution sets.

OOD specs (`--ood`):
- `heldout`: the test images of the classes the model was not trained on (its training run's `classes`
  left some out, as the fashion_mnist_8class recipe does): near-OOD, same sensor and framing;
- `noise`: uniform noise images of the dataset's shape (seeded): far-OOD;
- `CORRUPTION:SEVERITY`, e.g. `impulse_noise:5`: the dataset's test images so corrupted;
- any dataset spec (`digits`, `fashion-mnist-c:fog:5`, `folder:PATH`): its test split, resized to the
  model's input and matched to its channels when it feeds the model.
"""

import numpy as np
import torch

from ..data import build_dataset
from ..data.base import SPLIT_SEED, DatasetInfo, InMemoryImageDataset, stratified_split
from ..data.corruptions import list_corruptions
from ..data.datasets import corrupt_dataset

NEAR, NOISE = "heldout", "noise"
NOISE_IMAGES = 2000


def default_ood(info: DatasetInfo, heldout: bool) -> list[str]:
    """Near-OOD when the model left classes out; far-OOD always: scikit-learn's digits, noise, and the
    severest (5) of three corruptions that change an image's nature most (noise, fog, inversion)."""
    severest = [f"{name}:5" for name in ("impulse_noise", "fog", "inverse") if name in list_corruptions()]
    far = ["digits"] if info.name != "digits" else []
    return ([NEAR] if heldout else []) + far + [NOISE] + severest


def held_out_classes(num_dataset_classes: int, classes: list[int] | None) -> list[int]:
    return [c for c in range(num_dataset_classes) if c not in (classes or [])] if classes else []


def ood_set(spec: str, data: str, test_set, classes: list[int] | None, seed: int = 0):
    """The images `spec` names (see the module docstring); labels are not used."""
    if spec == NEAR:
        full = build_dataset(data, "test")
        heldout = held_out_classes(full.info.num_classes, classes)
        if not heldout:
            raise ValueError("--ood heldout: the model was trained on every class of its dataset, so there are no "
                             "held-out classes (train on a subset with --classes, e.g. the fashion_mnist_8class "
                             "recipe)")
        keep = np.flatnonzero(np.isin(np.asarray(full.targets), heldout))
        return full.subset(keep)
    if spec == NOISE:
        info = test_set.info
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (NOISE_IMAGES, info.in_chans, info.img_size, info.img_size),
                               generator=generator, dtype=torch.uint8)
        return InMemoryImageDataset(images, torch.zeros(NOISE_IMAGES, dtype=torch.int64), info)
    name, _, severity = spec.partition(":")
    if name in list_corruptions() and severity.isdigit():
        return corrupt_dataset(test_set, name, int(severity), seed)
    return build_dataset(spec, "test")


def sweep_subset(test_set, images: int | None):
    """A fixed, class-stratified subset of `images` test images (all of them when None or more)."""
    if images is None or images >= len(test_set):
        return test_set
    labels = np.asarray(test_set.targets)
    return test_set.subset(stratified_split(labels, images / len(labels), SPLIT_SEED, exact=images)[1])
