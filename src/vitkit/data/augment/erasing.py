"""timm's RandomErasing (one box per image) for a whole batch of normalized images."""

import math

import torch
from torch import Tensor

from .geometry import random_offsets

ERASE_ATTEMPTS = 10  # timm tries this often to fit a box, then leaves the image alone
ERASE_MODES = ("pixel", "rand", "const")


def _sample_erase_mask(
    batch: int,
    height: int,
    width: int,
    p: float,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """Boolean (B, 1, H, W), True inside each image's box; all attempts drawn at once, the first fit kept."""
    erase = torch.rand(batch, generator=generator) < p
    shape = (batch, ERASE_ATTEMPTS)
    target_area = height * width * torch.empty(shape).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(shape).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    h = torch.sqrt(target_area * aspect).round()
    w = torch.sqrt(target_area / aspect).round()
    fits = (h < height) & (w < width)
    first_fit = fits.float().argmax(dim=1, keepdim=True)
    h, w, erase = h.gather(1, first_fit), w.gather(1, first_fit), erase & fits.any(dim=1)
    top, left = random_offsets(height - h, generator), random_offsets(width - w, generator)
    rows, cols = torch.arange(height), torch.arange(width)
    in_rows = (rows >= top) & (rows < top + h)
    in_cols = (cols >= left) & (cols < left + w)
    return (erase.view(-1, 1, 1) & in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def random_erasing(
    x: Tensor,
    p: float = 0.25,
    scale: tuple[float, float] = (0.02, 1 / 3),
    ratio: tuple[float, float] = (0.3, 3.3),
    mode: str = "pixel",
    *,
    generator: torch.Generator,
) -> Tensor:
    """With probability p per image, fill one random box with N(0, 1) noise per pixel ("pixel"), per
    channel ("rand"), or with zeros ("const"). For normalized float images, where N(0, 1) fits the data."""
    if not x.is_floating_point():
        raise TypeError(f"random_erasing works on normalized float images, got {x.dtype}")
    if mode not in ERASE_MODES:
        raise ValueError(f"random_erasing mode must be one of {ERASE_MODES}, got {mode!r}")
    batch, channels, height, width = x.shape
    mask = _sample_erase_mask(batch, height, width, p, scale, ratio, generator)
    if mode == "pixel":
        # draw noise only for the erased pixels, not for the whole batch
        noise = torch.randn(int(mask.sum()) * channels, generator=generator, dtype=x.dtype)
        return x.masked_scatter(mask.expand_as(x), noise)
    if mode == "rand":
        return torch.where(mask, torch.randn(batch, channels, 1, 1, generator=generator, dtype=x.dtype), x)
    return x.masked_fill(mask, 0)
