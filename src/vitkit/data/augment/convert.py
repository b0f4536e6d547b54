"""Pixel conventions shared by the augmentations: uint8 in [0, 255] or float in [0, 1], and normalization."""

from collections.abc import Sequence

import torch
from torch import Tensor


def check_images(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, C, H, W) with C in {{1, 3}}, got {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise TypeError(f"expected uint8 or floating point images, got {x.dtype}")


def to_unit_float(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float images are taken to be in [0, 1] already and returned as is."""
    check_images(x)
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def to_dtype(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Float [0, 1] back to the caller's dtype; uint8 is rounded, not truncated, so a no-op stays a no-op."""
    if dtype == torch.uint8:
        return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return x.to(dtype)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 or [0, 1] float images -> float32 (x - mean) / std; mean, std per channel in [0, 1] units."""
    check_images(x)
    channels = x.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} need one value per channel; "
                         f"the images have {channels} channel(s)")
    # one fused x * scale + shift pass, with uint8's 1/255 folded into the scale
    pixel_range = 255 if x.dtype == torch.uint8 else 1
    scale = 1 / (pixel_range * torch.tensor(std, dtype=torch.float32))
    shift = -torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)
    return torch.addcmul(shift.view(1, -1, 1, 1), x.float(), scale.view(1, -1, 1, 1))
