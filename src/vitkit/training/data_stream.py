"""The order and augmentation of training batches as a pure function of (seed, epoch, step).

That is what makes resume exact: a run restarted at step s draws exactly the batches and augmentation
it would have drawn, without replaying anything. Every process augments the whole global batch with
the same generator and keeps its own slice, so 1 and N processes see identical images.
"""

import torch
from torch.utils.data import DataLoader, Dataset


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def step_generator(seed: int, global_step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + global_step)


def batch_indices(order: torch.Tensor, batch_size: int, first_step: int) -> list[torch.Tensor]:
    """Full batches only: a smaller last batch would change the gradient scale and the schedule."""
    steps = len(order) // batch_size
    return [order[s * batch_size:(s + 1) * batch_size] for s in range(first_step, steps)]


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
