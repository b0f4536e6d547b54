"""Images in one subfolder per class (torchvision's ImageFolder layout), decoded lazily with Pillow."""

import functools
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .base import DatasetInfo, channel_stats, stratified_split

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
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


def load_image(path: Path, mode: str, size: int) -> torch.Tensor:
    """Decode to a (C, size, size) uint8 tensor: shorter side resized to `size`, then centre-cropped."""
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
    except OSError as e:  # Pillow's messages often omit which file was being read
        raise OSError(f"cannot decode {path}: {e}") from e
    scale = size / min(img.size)
    width, height = (max(size, round(side * scale)) for side in img.size)
    left, top = (width - size) // 2, (height - size) // 2
    img = img.resize((width, height), Image.Resampling.BICUBIC).crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8))
    return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()


def build_folder_dataset(
    root: str | Path, split: str, img_size: int = DEFAULT_IMG_SIZE
) -> ImageFolderDataset:
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
    return ImageFolderDataset(train_samples if split == "train" else as_samples(splits["test"]), info)


def find_split_folders(root: Path) -> dict[str, ClassFolders]:
    """{"train": ..., "test": ...} when root has split subfolders, else {"all": ...} to be split here."""
    test_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        return {"all": scan_class_folders(root)}
    train, test = scan_class_folders(root / "train"), scan_class_folders(test_dir)
    train_names, test_names = [d.name for d in train], [d.name for d in test]
    if train_names != test_names:
        raise ValueError(
            f"{root / 'train'} and {test_dir} must hold the same class folders; only in train: "
            f"{sorted(set(train_names) - set(test_names))}, only in {test_dir.name}: "
            f"{sorted(set(test_names) - set(train_names))}"
        )
    return {"train": train, "test": test}


def scan_class_folders(directory: Path) -> ClassFolders:
    class_dirs = sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"no class folders in {directory}: expected one subfolder of images per class")
    return {class_dir: find_images(class_dir) for class_dir in class_dirs}


def find_images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def drop_unreadable(root: Path, splits: dict[str, ClassFolders]) -> dict[str, ClassFolders]:
    """Skip files Pillow cannot read, warning once; fail if so many are broken that root is likely wrong."""
    found = [p for folders in splits.values() for files in folders.values() for p in files]
    unreadable = [p for p in found if not is_readable_image(p)]
    if unreadable:
        named = ", ".join(map(str, unreadable[:FILES_NAMED_IN_MESSAGES]))
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
    stat = path.stat()
    return verify_image(path, stat.st_mtime_ns, stat.st_size)


@functools.cache  # keyed on mtime and size so that train and test builds check each file once
def verify_image(path: Path, mtime_ns: int, size: int) -> bool:
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception:  # broken files raise anything from OSError to SyntaxError and struct.error
        return False
    return True


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
