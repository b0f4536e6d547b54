"""Learned absolute position embeddings and their resampling to a new grid."""

import math

import torch
import torch.nn.functional as F


def resample_abs_pos_embed(
    pos_embed: torch.Tensor, new_grid: int | tuple[int, int], num_prefix_tokens: int = 0, antialias: bool = False
) -> torch.Tensor:
    """Resample (1, prefix + H*W, D) to (1, prefix + new_h*new_w, D); prefix rows kept as they are.

    `new_grid` is a side (square grid) or (new_h, new_w). Bicubic without antialias by default:
    identical to timm for upsampling, and exportable to ONNX; `antialias=True` is timm's default
    (it differs only when shrinking).
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_grid = math.isqrt(grid.shape[1])
    if old_grid * old_grid != grid.shape[1]:
        raise ValueError(f"position embedding has {grid.shape[1]} patch positions, not a square grid")
    new_h, new_w = (new_grid, new_grid) if isinstance(new_grid, int) else (int(new_grid[0]), int(new_grid[1]))
    if (old_grid, old_grid) == (new_h, new_w):
        return pos_embed
    dim, dtype = grid.shape[-1], grid.dtype
    grid = grid.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)
