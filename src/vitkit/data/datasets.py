"""Build any vitkit dataset from a spec string: `name` or `name:ARG`."""

import dataclasses
import difflib

import torch
from torch.utils.data import Dataset

from .base import InMemoryImageDataset, carve_val, check_split, select_classes, val_count
from .cifar import CIFAR10, CIFAR100, load_cifar
from .digits import load_digits
from .folder import DEFAULT_IMG_SIZE as FOLDER_IMG_SIZE
from .folder import build_folder_dataset, folder_ships_val
from .idx import FASHION_MNIST, MNIST, load_idx_dataset
from .synthetic import DEFAULT_IMG_SIZE as SYNTHETIC_IMG_SIZE
from .synthetic import DEFAULT_NUM_TRAIN, make_synthetic

SPEC_FORMS = {  # dataset name -> how its spec is written, for list_datasets() users and error messages
    "cifar10": "cifar10:PATH",
    "cifar100": "cifar100:PATH",
    "digits": "digits",
    "fashion-mnist": "fashion-mnist[:PATH]",
    "fashion-mnist-c": "fashion-mnist-c:CORRUPTION:SEVERITY",
    "folder": "folder:PATH",
    "mnist": "mnist:PATH",
    "synthetic": "synthetic[:N]",
}

# How much of each dataset's training split is held out for validation (checkpoint selection, tuning,
# calibration) when --val-split is not given: a count of images (at most a tenth of a smaller training
# split), or a fraction. Carved stratified by class with a fixed seed, so every run and every training
# seed holds out the same images.
DEFAULT_VAL_SPLIT = {
    "cifar10": 5000,
    "cifar100": 5000,
    "digits": 0.1,  # 144 of the 1,437 training images
    "fashion-mnist": 5000,
    "fashion-mnist-c": 5000,
    "folder": 0.1,
    "mnist": 5000,
    "synthetic": 0.1,
}


def list_datasets() -> list[str]:
    return sorted(SPEC_FORMS)


def build_dataset(spec: str, split: str = "train", *, seed: int = 0, img_size: int | None = None,
                  val_split: float | int | None = None, classes=None) -> Dataset:
    """The `split` ("train", "val" or "test") of the dataset named by `spec`.

    "val" is the dataset's own validation split where it ships one (a folder with train/, val/ and
    test/), else it is carved from the training split: `val_split` images (a count, or a fraction in
    (0, 1); default `DEFAULT_VAL_SPLIT[name]`), stratified and always the same ones, and "train" is
    then the rest. `val_split=0` keeps the whole training split and there is no "val".

    Items are (uint8 tensor (C, H, W), int label) and the dataset carries `.info` (a DatasetInfo) and
    `.targets`; in-memory datasets also carry `.images`, folder datasets `.samples`.
    `seed` only varies the synthetic images: real datasets have fixed splits so test numbers stay comparable.
    `img_size` sets the decode size of folder datasets (default 224) and synthetic ones (default 32);
    the others come in one native size, and asking for another is an error (resize in the transforms).
    `classes` (indices, or a string such as "0-7") keeps those classes only, relabelled 0..k-1; the
    validation split is carved before, so it holds the same images of those classes as without.
    """
    name, _, arg = spec.strip().partition(":")
    name = name.lower()
    if name == "fashion-mnist-c":
        corruption, severity = _corruption_arg(spec, arg)
        clean = build_dataset("fashion-mnist", split, seed=seed, img_size=img_size, val_split=val_split,
                              classes=classes)
        return corrupt_dataset(clean, corruption, severity, seed, name=f"fashion-mnist-c:{corruption}:{severity}")
    if name not in SPEC_FORMS:
        raise ValueError(unknown_dataset_message(name))
    form = SPEC_FORMS[name]
    if form.endswith(":PATH") and not arg:
        raise ValueError(f"dataset {name!r} needs a path: write it as {form!r}")
    if ":" not in form and arg:
        raise ValueError(f"dataset {name!r} takes no argument, got {spec!r}")
    check_split(split)

    if split == "test":
        dataset = _official_split(name, arg, spec, "test", seed, img_size)
    elif name == "folder" and folder_ships_val(arg):
        if val_split is not None:
            raise ValueError(f"{spec} ships its own validation split (val/ beside train/ and test/); "
                             "--val-split does not apply to it")
        dataset = _official_split(name, arg, spec, split, seed, img_size)
    else:
        train = _official_split(name, arg, spec, "train", seed, img_size)
        count = val_count(default_val_count(name, len(train)) if val_split is None else val_split, len(train), spec)
        if count == 0 and split == "val":
            raise ValueError(f"{spec} has no validation split with val_split=0 (the whole training split "
                             "trains); give a count or fraction to carve one")
        if count == 0:
            dataset = train
        else:
            train_idx, val_idx = carve_val(train.targets, count)
            dataset = train.subset(train_idx if split == "train" else val_idx)

    if classes is not None:
        dataset = select_classes(dataset, classes, spec)
    if img_size is not None and dataset.info.img_size != img_size:
        native = dataset.info.img_size
        raise ValueError(f"{name} images are {native}x{native}, not {img_size}: resize in the transforms")
    return dataset


def corrupt_dataset(dataset, corruption: str, severity: int, seed: int = 0, name: str | None = None):
    """An in-memory copy of `dataset` with every image corrupted (see vitkit.data.corruptions): the same
    images for the same (corruption, severity, seed)."""
    from .corruptions import corrupt

    if not hasattr(dataset, "images"):
        dataset = InMemoryImageDataset(torch.stack([dataset[i][0] for i in range(len(dataset))]),
                                       torch.as_tensor(dataset.targets), dataset.info)
    images = torch.from_numpy(corrupt(dataset.images.numpy(), corruption, severity, seed))
    info = dataset.info if name is None else dataclasses.replace(dataset.info, name=name)
    return InMemoryImageDataset(images, dataset.targets, info)


def _corruption_arg(spec: str, arg: str) -> tuple[str, int]:
    from .corruptions import list_corruptions

    corruption, _, severity = arg.partition(":")
    if corruption not in list_corruptions():
        raise ValueError(f"{spec!r}: unknown corruption {corruption!r}; expected fashion-mnist-c:CORRUPTION:SEVERITY "
                         f"with CORRUPTION one of {', '.join(list_corruptions())}")
    if severity not in ("1", "2", "3", "4", "5"):
        raise ValueError(f"{spec!r}: severity must be 1-5, got {severity!r}")
    return corruption, int(severity)


def default_val_count(name: str, num_train: int) -> int:
    default = DEFAULT_VAL_SPLIT[name]
    count = min(default, round(0.1 * num_train)) if isinstance(default, int) else round(default * num_train)
    return max(1, count)


def _official_split(name: str, arg: str, spec: str, split: str, seed: int, img_size: int | None):
    """The split as the dataset itself defines it."""
    if name == "folder":
        return build_folder_dataset(arg, split, img_size or FOLDER_IMG_SIZE)
    if name == "fashion-mnist":
        return load_idx_dataset(arg, split, FASHION_MNIST)
    if name == "mnist":
        return load_idx_dataset(arg, split, MNIST)
    if name == "cifar10":
        return load_cifar(arg, split, CIFAR10)
    if name == "cifar100":
        return load_cifar(arg, split, CIFAR100)
    if name == "digits":
        return load_digits(split)
    size = img_size or SYNTHETIC_IMG_SIZE
    return make_synthetic(split, num_train=parse_count(spec, arg), seed=seed, img_size=size)


def unknown_dataset_message(name: str) -> str:
    close = difflib.get_close_matches(name, SPEC_FORMS, n=1)
    suggestion = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown dataset {name!r}.{suggestion} Valid specs: {', '.join(SPEC_FORMS.values())}"


def parse_count(spec: str, arg: str) -> int:
    if not arg:
        return DEFAULT_NUM_TRAIN
    if not arg.isdigit():
        raise ValueError(f"{spec!r}: expected synthetic:N with N a number of train samples")
    return int(arg)
