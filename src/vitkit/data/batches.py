"""Batches of uint8 images and labels from a dataset: sliced from memory, or decoded in worker processes."""

import torch
from torch.utils.data import DataLoader, Dataset


def _stack(items):
    images, labels = zip(*items, strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def iterate_batches(dataset: Dataset, batches: list[torch.Tensor], workers: int = 0):
    """uint8 image batches and labels; in-memory datasets are sliced, others decoded (in worker processes)."""
    if hasattr(dataset, "images"):
        for idx in batches:
            yield dataset.images[idx], dataset.targets[idx]
        return
    loader = DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], num_workers=workers,
                        collate_fn=_stack, persistent_workers=False)
    yield from loader


def eval_batches(dataset: Dataset, transform, batch_size: int = 256, workers: int = 0):
    order = torch.arange(len(dataset))
    chunks = [order[i:i + batch_size] for i in range(0, len(dataset), batch_size)]
    for images, labels in iterate_batches(dataset, chunks, workers):
        yield transform(images), labels
