"""Images in one subfolder per class (torchvision's ImageFolder layout), decoded lazily with Pillow."""

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .base import DatasetInfo, channel_stats, stratified_split
from .images import UnreadableImageError, decode_image

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
DEFAULT_IMG_SIZE = 224
TEST_FRACTION = 0.2  # used only when the folder has no train/ and val/ (or test/) subfolders
SPLIT_SEED = 0
MAX_UNREADABLE_FRACTION = 0.01  # a few broken downloads are normal; more suggests the wrong folder
STATS_SAMPLE_SIZE = 500
FILES_NAMED_IN_MESSAGES = 5

ClassFolders = dict[Path, list[Path]]  # class folder -> its image files, both sorted


class ImageFolderDataset(Dataset):
    def __init__(self, samples: list[tuple[Path, int]], info: DatasetInfo):
        self.samples = samples
        self.targets = torch.tensor([label for _, label in samples], dtype=torch.int64)
        self.info = info
        self.mode = "L" if info.in_chans == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return load_image(path, self.mode, self.info.img_size), label

    def subset(self, indices: np.ndarray) -> "ImageFolderDataset":
        return ImageFolderDataset([self.samples[i] for i in indices], self.info)

    def relabel(self, targets: torch.Tensor, info: DatasetInfo) -> "ImageFolderDataset":
        return ImageFolderDataset([(path, int(t)) for (path, _), t in zip(self.samples, targets, strict=True)], info)


def load_image(path: Path, mode: str, size: int) -> torch.Tensor:
    """Decode to a (C, size, size) uint8 tensor: shorter side resized to `size`, then centre-cropped.

    A file that stopped decoding since the scan (or a decompression bomb) raises UnreadableImageError, an
    OSError naming the file.
    """
    img = decode_image(path, mode)
    scale = size / min(img.size)
    width, height = (max(size, round(side * scale)) for side in img.size)
    left, top = (width - size) // 2, (height - size) // 2
    img = img.resize((width, height), Image.Resampling.BICUBIC).crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8))
    return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()


def build_folder_dataset(
    root: str | Path, split: str, img_size: int = DEFAULT_IMG_SIZE
) -> ImageFolderDataset | None:
    """The folder's own `split`, or None for "val" when the folder ships no validation split.

    Layouts: `train/` + `val/` + `test/` (all three used as they are); `train/` + `test/`; `train/` +
    `val/` (ImageNet's layout: `val/` is the held-out evaluation set, so it is the test split here and
    the validation split is carved from `train/` by the caller); or class folders directly under root
    (a fixed stratified 80/20 train/test split).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    splits = drop_unreadable(root, find_split_folders(root))
    for folders in splits.values():
        for class_dir, files in folders.items():
            if not files:
                raise ValueError(f"class folder {class_dir} has no readable images "
                                 f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")

    if "all" in splits:
        splits = split_stratified(splits["all"])
    if split not in splits:
        return None
    class_names = tuple(class_dir.name for class_dir in splits["train"])
    train_samples = as_samples(splits["train"])

    # One look per class is cheap and enough: real datasets are either all grayscale or mostly colour.
    first_images = [files[0] for files in splits["train"].values()]
    in_chans = 1 if all(image_mode(path) in GRAY_MODES for path in first_images) else 3
    mean, std = sample_channel_stats(tuple(path for path, _ in train_samples), in_chans, img_size)
    info = DatasetInfo(
        name=root.resolve().name,
        num_classes=len(class_names),
        class_names=class_names,
        in_chans=in_chans,
        img_size=img_size,
        mean=mean,
        std=std,
    )
    return ImageFolderDataset(train_samples if split == "train" else as_samples(splits[split]), info)


def folder_ships_val(root: str | Path) -> bool:
    """Whether the folder has its own validation split: train/, val/ and test/ side by side."""
    root = Path(root).expanduser()
    return all((root / name).is_dir() for name in ("train", "val", "test"))


def find_split_folders(root: Path) -> dict[str, ClassFolders]:
    """{"train", "test"[, "val"]} when root has split subfolders, else {"all": ...} to be split here."""
    present = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    if "train" not in present or len(present) == 1:
        return {"all": scan_class_folders(root)}
    if "test" not in present:  # train/ + val/: val/ is the evaluation set (ImageNet's convention)
        present = {"train": present["train"], "test": present["val"]}
    splits = {name: scan_class_folders(directory) for name, directory in present.items()}
    train_names = [d.name for d in splits["train"]]
    for name, folders in splits.items():
        names = [d.name for d in folders]
        if names != train_names:
            raise ValueError(
                f"{present['train']} and {present[name]} must hold the same class folders; only in train: "
                f"{sorted(set(train_names) - set(names))}, only in {present[name].name}: "
                f"{sorted(set(names) - set(train_names))}"
            )
    return splits


def scan_class_folders(directory: Path) -> ClassFolders:
    class_dirs = sorted(d for d in directory.iterdir() if not d.name.startswith(".") and is_class_folder(d, directory))
    if not class_dirs:
        raise ValueError(f"no class folders in {directory}: expected one subfolder of images per class")
    return {class_dir: find_images(class_dir) for class_dir in class_dirs}


def is_class_folder(entry: Path, directory: Path) -> bool:
    """A folder, or a symlink to one, that is not a loop back to the dataset; skipped symlinks are warned about."""
    if not entry.is_symlink():
        return entry.is_dir()
    try:
        target = entry.resolve(strict=True)
    except (OSError, RuntimeError):  # dangling, or a loop (RuntimeError before Python 3.13)
        warnings.warn(f"skipping {entry}: a broken or self-referencing symlink, expected a class folder",
                      stacklevel=3)
        return False
    if not target.is_dir():
        return False
    if target == directory.resolve() or target in directory.resolve().parents:
        warnings.warn(f"skipping {entry}: a symlink to {target}, which contains the dataset (a symlink loop), "
                      "expected a class folder", stacklevel=3)
        return False
    return True


def find_images(directory: Path) -> list[Path]:
    """Image files under directory, following symlinked folders as torchvision does, but never round a loop.

    Broken symlinks with an image suffix are kept, so that the scan counts them as unreadable and names them.
    """
    found, followed = [], {os.path.realpath(directory)}
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(here)
        followed.add(real)
        keep = []
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                target = os.path.realpath(here / name)
                if target == real or real.startswith(target.rstrip(os.sep) + os.sep):
                    warnings.warn(f"skipping {here / name}: a symlink to {target}, which contains it "
                                  "(a symlink loop)", stacklevel=2)
                    continue
                if target in followed:  # already scanned through another link: a loop or a duplicate
                    continue
                followed.add(target)
            keep.append(name)
        dirnames[:] = keep
        found += [here / name for name in filenames if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
                  and ((here / name).is_file() or (here / name).is_symlink())]
    return sorted(found)


def drop_unreadable(root: Path, splits: dict[str, ClassFolders]) -> dict[str, ClassFolders]:
    """Skip files Pillow cannot read, warning once; fail if so many are broken that root is likely wrong."""
    found = [p for folders in splits.values() for files in folders.values() for p in files]
    problems = {p: problem for p in found if (problem := image_problem(p)) is not None}
    unreadable = list(problems)
    if unreadable:
        named = ", ".join(f"{p} ({problems[p]})" for p in unreadable[:FILES_NAMED_IN_MESSAGES])
        if len(unreadable) > FILES_NAMED_IN_MESSAGES:
            named += ", ..."
        share = len(unreadable) / len(found)
        counts = f"{len(unreadable)} of {len(found)} image files under {root}"
        if share > MAX_UNREADABLE_FRACTION:
            raise ValueError(f"{counts} ({share:.1%}) cannot be read by Pillow, more than the "
                             f"{MAX_UNREADABLE_FRACTION:.0%} tolerated: {named}")
        warnings.warn(f"skipping {counts} that Pillow cannot read: {named}", stacklevel=2)
    skip = set(unreadable)
    return {
        name: {class_dir: [p for p in files if p not in skip] for class_dir, files in folders.items()}
        for name, folders in splits.items()
    }


def is_readable_image(path: Path) -> bool:
    return image_problem(path) is None


def image_problem(path: Path) -> str | None:
    """Why `path` cannot be trained on (decoded in full, as training will), or None when it decodes."""
    try:
        stat = path.stat()
    except (OSError, RuntimeError) as e:  # e.g. a dangling symlink, or a file deleted since it was listed
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return f"a broken or self-referencing symlink ({reason})" if path.is_symlink() else reason
    return decode_problem(path, stat.st_mtime_ns, stat.st_size, Image.MAX_IMAGE_PIXELS)


@functools.cache  # keyed on mtime and size so that train and test builds decode each file once
def decode_problem(path: Path, mtime_ns: int, size: int, max_pixels: int | None) -> str | None:
    """The reason `path` does not decode, or None; `max_pixels` (the bomb limit in force) is only a cache key."""
    try:
        decode_image(path, "RGB", draft=True)  # a truncated JPEG passes Image.verify() but not a decode
    except UnreadableImageError as e:
        return e.reason
    return None


def image_mode(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


def split_stratified(folders: ClassFolders) -> dict[str, ClassFolders]:
    labels = np.array([label for label, files in enumerate(folders.values()) for _ in files])
    paths = [p for files in folders.values() for p in files]
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    chosen = {"train": {paths[i] for i in train_idx}, "test": {paths[i] for i in test_idx}}
    return {
        split: {class_dir: [p for p in files if p in members] for class_dir, files in folders.items()}
        for split, members in chosen.items()
    }


def as_samples(folders: ClassFolders) -> list[tuple[Path, int]]:
    return [(path, label) for label, files in enumerate(folders.values()) for path in files]


@functools.cache  # a test-split build needs the same train statistics as the train build before it
def sample_channel_stats(
    paths: tuple[Path, ...], in_chans: int, img_size: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std over a fixed sample of the images, decoded exactly as training will see them."""
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = np.sort(rng.choice(len(paths), size=min(len(paths), STATS_SAMPLE_SIZE), replace=False))
    mode = "L" if in_chans == 1 else "RGB"
    return channel_stats(load_image(paths[i], mode, img_size) for i in chosen)
