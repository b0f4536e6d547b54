"""Pieces every dataset shares: its description, the in-memory container, split names and statistics."""

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0  # validation splits are carved with a fixed seed: the same images in every run and every seed


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    in_chans: int  # 1 or 3
    img_size: int  # side of the square images the dataset yields
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units, measured on the train split
    std: tuple[float, ...]

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: num_classes={self.num_classes} but {len(self.class_names)} names")
        if self.in_chans not in (1, 3) or len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(
                f"{self.name}: in_chans={self.in_chans} needs that many mean/std values, "
                f"got mean={self.mean} std={self.std}"
            )


class InMemoryImageDataset(Dataset):
    """A whole split in one uint8 tensor, so a trainer can index and augment batches without a DataLoader."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, info: DatasetInfo):
        expected = (info.in_chans, info.img_size, info.img_size)
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"{info.name}: expected uint8 images of shape (N, {expected}), got "
                             f"{images.dtype} {tuple(images.shape)}")
        if len(targets) != len(images):
            raise ValueError(f"{info.name}: {len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = targets.to(torch.int64)
        self.info = info

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])

    def subset(self, indices: np.ndarray) -> "InMemoryImageDataset":
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return InMemoryImageDataset(self.images[index], self.targets[index], self.info)

    def relabel(self, targets: torch.Tensor, info: DatasetInfo) -> "InMemoryImageDataset":
        return InMemoryImageDataset(self.images, targets, info)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use 'train', 'val' (carved from the training data) or 'test'")
    return split


def val_count(val_split: float | int, num_train: int, source: str) -> int:
    """How many of `num_train` training images a `--val-split` value holds out: a count (>= 1), a
    fraction in (0, 1), or 0 for none."""
    if isinstance(val_split, bool) or not isinstance(val_split, int | float):
        raise ValueError(f"val_split must be a count of images or a fraction in (0, 1), got {val_split!r}")
    if isinstance(val_split, float) and val_split.is_integer() and val_split >= 1:
        val_split = int(val_split)
    if isinstance(val_split, float):
        if not 0 <= val_split < 1:
            raise ValueError(f"val_split {val_split} must be a fraction in (0, 1) or a whole count of images")
        count = round(num_train * val_split)
        if val_split > 0 and count == 0:
            raise ValueError(f"val_split {val_split} of {num_train} training images in {source} is no image")
        return count
    if not 0 <= val_split < num_train:
        raise ValueError(f"val_split {val_split} must hold out between 0 and {num_train - 1} of the {num_train} "
                         f"training images in {source}")
    return val_split


def carve_val(targets: torch.Tensor | np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: `count` images held out, stratified by class, always the same ones."""
    labels = np.asarray(targets)
    return stratified_split(labels, count / len(labels), SPLIT_SEED, exact=count)


def channel_stats(batches: Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units over uint8 images given as (C, H, W) or (N, C, H, W) chunks.

    Chunked so that large splits never need a float copy of the whole split in memory.
    """
    total = total_sq = None
    count = 0
    for batch in batches:
        pixels = batch.movedim(-3, 0).reshape(batch.shape[-3], -1).double().div_(255)
        sums, sums_sq = pixels.sum(1), pixels.square().sum(1)
        total = sums if total is None else total + sums
        total_sq = sums_sq if total_sq is None else total_sq + sums_sq
        count += pixels.shape[1]
    if total is None:
        raise ValueError("cannot compute mean/std of zero images")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(m, 4) for m in mean.tolist()), tuple(round(s, 4) for s in std.tolist())


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int,
                     exact: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices with each class split in the same proportion.

    With `exact`, the held-out part has exactly that many images: per-class shares are rounded down,
    and the remaining ones go to the classes with the largest remainders (largest-remainder method).
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = [rng.permutation(np.flatnonzero(labels == label)) for label in classes]
    if exact is None:
        counts = [round(len(m) * test_fraction) for m in members]
    else:
        shares = np.array([len(m) * exact / len(labels) for m in members])
        counts = np.floor(shares).astype(int)
        for i in np.argsort(-(shares - counts), kind="stable")[: exact - counts.sum()]:
            counts[i] += 1
    train = [m[n:] for m, n in zip(members, counts, strict=True)]
    test = [m[:n] for m, n in zip(members, counts, strict=True)]
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def label_subset(targets: torch.Tensor | np.ndarray, per_class: int | None = None, fraction: float | None = None,
                 seed: int = 0, source: str = "the training split") -> np.ndarray:
    """Sorted indices of a fixed, seeded subset of labelled images for label-efficiency runs: `per_class`
    images of every class, or a stratified `fraction` of all of them. The same `seed` gives the same images
    whatever the run's training seed."""
    labels = np.asarray(targets)
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of labels_per_class and label_fraction")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
        count = max(1, round(len(labels) * fraction))
        return np.arange(len(labels)) if count >= len(labels) else stratified_split(labels, fraction, seed, count)[1]
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ValueError(f"labels_per_class={per_class}, but class {label} has only {len(members)} images in "
                             f"{source}; expected at most {len(members)}")
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen))


def parse_classes(classes, source: str = "classes") -> tuple[int, ...] | None:
    """Class indices from a list of ints or a string such as "0-7" or "0,2,5-9"; None stays None."""
    if classes is None:
        return None
    if isinstance(classes, str):
        picked = []
        for part in classes.replace(" ", "").split(","):
            first, dash, last = part.partition("-")
            if not first.isdigit() or (dash and not last.isdigit()):
                raise ValueError(f"{source}={classes!r}: expected class indices such as '0-7' or '0,2,5-9'")
            picked.extend(range(int(first), int(last) + 1) if dash else [int(first)])
        classes = picked
    if isinstance(classes, int) or not all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        raise ValueError(f"{source}={classes!r}: expected a list of class indices or a string such as '0-7'")
    return tuple(classes)


def select_classes(dataset, classes, source: str):
    """The images of `classes` only, relabelled 0..len(classes)-1 in the order given (a model trained on
    classes 0-7 of a 10-class dataset has 8 outputs; the held-out classes are near-OOD data for it)."""
    classes = parse_classes(classes)
    info = dataset.info
    bad = [c for c in classes if not 0 <= c < info.num_classes]
    if bad or len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"classes={list(classes)} for {source}: expected at least 2 distinct class indices "
                         f"from 0 to {info.num_classes - 1}" + (f" (out of range: {bad})" if bad else ""))
    targets = torch.as_tensor(dataset.targets)
    keep = np.flatnonzero(np.isin(targets.numpy(), classes))
    remap = torch.full((info.num_classes,), -1, dtype=torch.int64)
    remap[list(classes)] = torch.arange(len(classes))
    subset = dataset.subset(keep)
    new_info = replace(info, num_classes=len(classes), class_names=tuple(info.class_names[c] for c in classes))
    return subset.relabel(remap[torch.as_tensor(subset.targets)], new_info)
