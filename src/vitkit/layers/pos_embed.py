"""Learned absolute position embeddings and their resampling to a new grid."""

import math

import torch
import torch.nn.functional as F


def resample_abs_pos_embed(
    pos_embed: torch.Tensor, new_grid: int | tuple[int, int], num_prefix_tokens: int = 0, antialias: bool = False,
    in_float32: bool = True,
) -> torch.Tensor:
    """Resample (1, prefix + H*W, D) to (1, prefix + new_h*new_w, D); prefix rows kept as they are.

    `new_grid` is a side (square grid) or (new_h, new_w). Bicubic without antialias by default
    (exportable to ONNX); `antialias=True` is timm's default. The two differ when upsampling too:
    PyTorch's antialiased bicubic uses the cubic kernel with a=-0.5, the plain one a=-0.75.
    Computed in float32 and cast back (as timm), unless `in_float32=False`.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_grid = math.isqrt(grid.shape[1])
    if old_grid * old_grid != grid.shape[1]:
        raise ValueError(f"position embedding has {grid.shape[1]} patch positions, not a square grid")
    new_h, new_w = (new_grid, new_grid) if isinstance(new_grid, int) else (int(new_grid[0]), int(new_grid[1]))
    if (old_grid, old_grid) == (new_h, new_w):
        return pos_embed
    dim, dtype = grid.shape[-1], grid.dtype
    grid = grid.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    grid = grid.float() if in_float32 else grid
    grid = F.interpolate(grid, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)


# ----- per-input interpolation (dynamic_img_size), one pure function per way of resampling -----------------------
def interp_timm(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """Bicubic with antialias, in float32: timm's `VisionTransformer._pos_embed`, and transformers'
    `Dinov2WithRegistersModel`."""
    return resample_abs_pos_embed(pos_embed, grid, num_prefix_tokens, antialias=True)


def interp_bicubic(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """Bicubic without antialias, in float32 and cast back: transformers' `Dinov2Model`."""
    return resample_abs_pos_embed(pos_embed, grid, num_prefix_tokens, antialias=False)


def interp_bicubic_model_dtype(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """Bicubic without antialias, in the embedding's own dtype (bf16 stays bf16): transformers' CLIP and SigLIP
    vision towers called with `interpolate_pos_encoding=True`. Equal to "bicubic" for a float32 model."""
    return resample_abs_pos_embed(pos_embed, grid, num_prefix_tokens, antialias=False, in_float32=False)


POS_EMBED_INTERP = {"timm": interp_timm, "bicubic": interp_bicubic, "bicubic_model_dtype": interp_bicubic_model_dtype}
