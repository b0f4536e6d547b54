"""Crops, flips and resizes for whole batches: parameters per image, one resampling call per batch.

Geometry is written as pixel-space inverse maps, 3x3 matrices taking an output pixel coordinate to the input
coordinate it reads from. Pixel (row i, column j) has its centre at (x, y) = (j + 0.5, i + 0.5).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .convert import to_dtype, to_unit_float

CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries this often before falling back to a centre crop


def _pixel_to_grid(height: int, width: int) -> Tensor:
    # affine_grid's [-1, 1] coordinates span the outer pixel edges when align_corners=False
    return torch.tensor([[2 / width, 0, -1], [0, 2 / height, -1], [0, 0, 1]])


def _affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """F.affine_grid(theta, align_corners=False) for thetas (B, 2, 3), as one broadcast add of a per-column
    and a per-row term: several times faster on CPU than affine_grid's (B, H*W, 3) @ (B, 3, 2) matmul."""
    xs = (torch.arange(width, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=theta.dtype) * 2 + 1) / height - 1
    along_x = theta[:, None, :, 0] * xs[None, :, None] + theta[:, None, :, 2]  # (B, W, 2)
    along_y = theta[:, None, :, 1] * ys[None, :, None]  # (B, H, 2)
    return along_x[:, None, :, :] + along_y[:, :, None, :]


def warp(x: Tensor, inverse_maps: Tensor, size: tuple[int, int], padding_mode: str = "zeros") -> Tensor:
    """Bilinear resample of float images (B, C, H, W) through per-image pixel-space inverse maps (B, 3, 3)."""
    theta = _pixel_to_grid(*x.shape[-2:]) @ inverse_maps @ torch.linalg.inv(_pixel_to_grid(*size))
    grid = _affine_grid(theta[:, :2].to(x.dtype), *size)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """(top, left, h, w) per image, float (B, 4), drawn by torchvision's RandomResizedCrop rule.

    All attempts are drawn at once and the first that fits is kept, which is the same distribution as
    torchvision's loop; images where none fits get its centre-crop fallback.
    """
    shape = (batch, CROP_ATTEMPTS)
    target_area = height * width * torch.empty(shape).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(shape).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target_area * aspect).round()
    h = torch.sqrt(target_area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first_fit = fits.float().argmax(dim=1, keepdim=True)
    h, w, found = h.gather(1, first_fit)[:, 0], w.gather(1, first_fit)[:, 0], fits.any(dim=1)

    fallback_h, fallback_w = _centre_fallback_size(height, width, ratio)
    h = torch.where(found, h, fallback_h)
    w = torch.where(found, w, fallback_w)
    top = torch.where(found, random_offsets(height - h, generator), (height - h) // 2)
    left = torch.where(found, random_offsets(width - w, generator), (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def random_offsets(max_offset: Tensor, generator: torch.Generator) -> Tensor:
    """Whole numbers drawn uniformly from 0..max_offset (inclusive), elementwise, as floats."""
    draws = (torch.rand(max_offset.shape, generator=generator) * (max_offset + 1)).floor()
    return torch.minimum(draws, max_offset)  # a draw just below 1 can round up in float32


def _centre_fallback_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[float, float]:
    aspect = width / height
    if aspect < min(ratio):
        return float(round(width / min(ratio))), float(width)
    if aspect > max(ratio):
        return float(height), float(round(height * max(ratio)))
    return float(height), float(width)


def random_resized_crop(
    x: Tensor,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    generator: torch.Generator,
) -> Tensor:
    """Crop a random box per image (torchvision's sampling rule) and resize it to (size, size), bilinear."""
    dtype, x = x.dtype, to_unit_float(x)
    boxes = sample_crop_boxes(len(x), *x.shape[-2:], scale, ratio, generator)
    top, left, h, w = boxes.unbind(dim=1)
    inverse_maps = torch.zeros(len(x), 3, 3)
    inverse_maps[:, 0, 0], inverse_maps[:, 0, 2] = w / size, left
    inverse_maps[:, 1, 1], inverse_maps[:, 1, 2] = h / size, top
    inverse_maps[:, 2, 2] = 1
    # border padding clamps reads in the crop's outer half pixel, as F.interpolate does, rather than fade to 0
    return to_dtype(warp(x, inverse_maps, (size, size), padding_mode="border"), dtype)


def random_hflip(x: Tensor, p: float = 0.5, *, generator: torch.Generator) -> Tensor:
    flip = torch.rand(len(x), generator=generator) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_translate(x: Tensor, max_shift: int, *, generator: torch.Generator) -> Tensor:
    """Shift each image by whole pixels, up to `max_shift` in each direction (uniform per axis), filling the
    uncovered border with zeros: the pad-and-random-crop of CIFAR training, without any resampling (a shifted
    28x28 digit or garment keeps its exact pixels; a resized crop would blur them)."""
    if max_shift < 0:
        raise ValueError(f"translate must be a number of pixels >= 0, got {max_shift}")
    if max_shift == 0:
        return x
    batch, _, height, width = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, batch), generator=generator)
    rows = (dy[:, None] + torch.arange(height))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(width))[:, None, None, :]  # (B, 1, 1, W)
    return padded[torch.arange(batch)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def resize(x: Tensor, size: int) -> Tensor:
    """Shorter side to `size` (longer side rounded down, as torchvision), bicubic with antialias."""
    height, width = x.shape[-2:]
    if min(height, width) == size:
        return x
    if height <= width:
        out_size = (size, int(size * width / height))
    else:
        out_size = (int(size * height / width), size)
    dtype, x = x.dtype, to_unit_float(x)
    resized = F.interpolate(x, out_size, mode="bicubic", align_corners=False, antialias=True)
    return to_dtype(resized, dtype)


def center_crop(x: Tensor, size: int) -> Tensor:
    height, width = x.shape[-2:]
    if size > height or size > width:
        raise ValueError(f"center_crop to {size} needs images at least that large, got {height}x{width}")
    top, left = int(round((height - size) / 2)), int(round((width - size) / 2))
    return x[..., top : top + size, left : left + size]
