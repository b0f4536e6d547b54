"""Datasets as uint8 image tensors with integer labels; see `build_dataset` for the spec strings."""

from .base import DatasetInfo, InMemoryImageDataset
from .datasets import build_dataset, list_datasets
from .folder import ImageFolderDataset
from .idx import read_idx

__all__ = [
    "DatasetInfo",
    "ImageFolderDataset",
    "InMemoryImageDataset",
    "build_dataset",
    "list_datasets",
    "read_idx",
]
