"""scikit-learn's bundled 8x8 handwritten digits: tiny, offline, and always available."""

import numpy as np
import torch

from .base import DatasetInfo, InMemoryImageDataset, channel_stats, stratified_split

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed so that test accuracy means the same thing in every run


def load_digits(split: str) -> InMemoryImageDataset:
    from sklearn.datasets import load_digits as sklearn_load_digits  # a second to import: only pay it here

    bunch = sklearn_load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = stratified_split(bunch.target, TEST_FRACTION, SPLIT_SEED)
    mean, std = channel_stats([images[train_idx]])
    info = DatasetInfo(
        name="digits",
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        in_chans=1,
        img_size=8,
        mean=mean,
        std=std,
    )
    idx = train_idx if split == "train" else test_idx
    return InMemoryImageDataset(images[idx], labels[idx], info)
