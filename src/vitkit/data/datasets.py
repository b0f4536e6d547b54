"""Build any vitkit dataset from a spec string: `name` or `name:ARG`."""

import difflib

from torch.utils.data import Dataset

from .base import canonical_split
from .cifar import CIFAR10, CIFAR100, load_cifar
from .digits import load_digits
from .folder import DEFAULT_IMG_SIZE as FOLDER_IMG_SIZE
from .folder import build_folder_dataset
from .idx import FASHION_MNIST, MNIST, load_idx_dataset
from .synthetic import DEFAULT_IMG_SIZE as SYNTHETIC_IMG_SIZE
from .synthetic import DEFAULT_NUM_TRAIN, make_synthetic

SPEC_FORMS = {  # dataset name -> how its spec is written, for list_datasets() users and error messages
    "cifar10": "cifar10:PATH",
    "cifar100": "cifar100:PATH",
    "digits": "digits",
    "fashion-mnist": "fashion-mnist[:PATH]",
    "folder": "folder:PATH",
    "mnist": "mnist:PATH",
    "synthetic": "synthetic[:N]",
}


def list_datasets() -> list[str]:
    return sorted(SPEC_FORMS)


def build_dataset(spec: str, split: str = "train", *, seed: int = 0, img_size: int | None = None) -> Dataset:
    """The `split` ("train" or "test"; "val" means "test") of the dataset named by `spec`.

    Items are (uint8 tensor (C, H, W), int label) and the dataset carries `.info` (a DatasetInfo) and
    `.targets`; in-memory datasets also carry `.images`, folder datasets `.samples`.
    `seed` only varies the synthetic images: real datasets have fixed splits so test numbers stay comparable.
    `img_size` sets the decode size of folder datasets (default 224) and synthetic ones (default 32);
    the others come in one native size, and asking for another is an error (resize in the transforms).
    """
    name, _, arg = spec.strip().partition(":")
    name = name.lower()
    if name not in SPEC_FORMS:
        raise ValueError(unknown_dataset_message(name))
    form = SPEC_FORMS[name]
    if form.endswith(":PATH") and not arg:
        raise ValueError(f"dataset {name!r} needs a path: write it as {form!r}")
    if ":" not in form and arg:
        raise ValueError(f"dataset {name!r} takes no argument, got {spec!r}")
    split = canonical_split(split)

    if name == "fashion-mnist":
        dataset = load_idx_dataset(arg, split, FASHION_MNIST)
    elif name == "mnist":
        dataset = load_idx_dataset(arg, split, MNIST)
    elif name == "cifar10":
        dataset = load_cifar(arg, split, CIFAR10)
    elif name == "cifar100":
        dataset = load_cifar(arg, split, CIFAR100)
    elif name == "digits":
        dataset = load_digits(split)
    elif name == "folder":
        dataset = build_folder_dataset(arg, split, img_size or FOLDER_IMG_SIZE)
    else:
        size = img_size or SYNTHETIC_IMG_SIZE
        dataset = make_synthetic(split, num_train=parse_count(spec, arg), seed=seed, img_size=size)

    if img_size is not None and dataset.info.img_size != img_size:
        native = dataset.info.img_size
        raise ValueError(f"{name} images are {native}x{native}, not {img_size}: resize in the transforms")
    return dataset


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
