"""The order and augmentation of training batches as a pure function of (seed, epoch, step).

That is what makes resume exact: a run restarted at step s draws exactly the batches and augmentation
it would have drawn, without replaying anything. Every process augments the whole global batch with
the same generator and keeps its own slice, so 1 and N processes see identical images.
"""

import torch

from ..data.batches import eval_batches, iterate_batches  # noqa: F401  (the trainer's data path, in one place)


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def step_generator(seed: int, global_step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + global_step)


def batch_indices(order: torch.Tensor, batch_size: int, first_step: int) -> list[torch.Tensor]:
    """Full batches only: a smaller last batch would change the gradient scale and the schedule."""
    steps = len(order) // batch_size
    return [order[s * batch_size:(s + 1) * batch_size] for s in range(first_step, steps)]
