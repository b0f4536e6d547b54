"""Image to patch tokens: one strided convolution."""

import torch
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True,
                 dynamic_img_size: bool = False):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.dynamic_img_size = dynamic_img_size  # any input at least one patch in size; the conv floors
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_img_size:
            check_image_input(x, self.in_chans, None, self.patch_size)
        else:
            check_image_input(x, self.in_chans, self.img_size, self.patch_size)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


def check_image_input(x: torch.Tensor, in_chans: int, img_size: int | None, patch_size: int | None = None) -> None:
    """`img_size=None` accepts any size of at least one patch."""
    # Errors here name what the model expects; a conv shape error deep inside would not.
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
    _, c, h, w = x.shape
    if c != in_chans:
        raise ValueError(f"expected {in_chans} input channel(s), got {c} (input shape {tuple(x.shape)})")
    if img_size is None:
        if patch_size and (h < patch_size or w < patch_size):
            raise ValueError(f"input {h}x{w} is smaller than one {patch_size}x{patch_size} patch")
        return
    if (h, w) != (img_size, img_size):
        hint = (
            f"; {h}x{w} is not divisible by patch size {patch_size}"
            if patch_size and (h % patch_size or w % patch_size)
            else "; create the model with img_size=... to resample its position embedding"
        )
        raise ValueError(f"expected input size {img_size}x{img_size}, got {h}x{w}{hint}")
