"""Helpers every family's model API shares: which blocks or stages `forward_intermediates` takes, and
fitting a checkpoint's first convolution to another input channel count."""

import torch


def take_indices(num_blocks: int, indices: int | list[int] | tuple[int, ...] | None) -> tuple[set[int], int]:
    if indices is None:
        take = list(range(num_blocks))
    elif isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"indices={indices} must be between 1 and the number of blocks ({num_blocks})")
        take = list(range(num_blocks - indices, num_blocks))
    else:
        take = [i + num_blocks if i < 0 else i for i in indices]
        bad = [i for i, t in zip(indices, take, strict=True) if not 0 <= t < num_blocks]
        if bad:
            raise ValueError(f"block indices {bad} are out of range for a model with {num_blocks} blocks")
    return set(take), max(take)


def adapt_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB patch-embedding weights to gray (sum) or to more channels (tiled, rescaled), as timm does."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def adapt_stem_channels(state_dict: dict[str, torch.Tensor], key: str, weight: torch.Tensor) -> None:
    """In place: `state_dict[key]`, the first convolution's weights, refit to `weight`'s input channels
    when the checkpoint was made for another count (same kernel size); anything else is left alone."""
    proj = state_dict.get(key)
    if proj is not None and proj.ndim == 4 and proj.shape[1] != weight.shape[1] and proj.shape[2:] == weight.shape[2:]:
        state_dict[key] = adapt_input_channels(proj, weight.shape[1])
