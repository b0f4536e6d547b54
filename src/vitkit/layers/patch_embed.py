"""Image to patch tokens: one strided convolution."""

import torch
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)

    def check_input(self, x: torch.Tensor) -> None:
        # Errors here name what the model expects; a conv shape error deep inside would not.
        if x.ndim != 4:
            raise ValueError(f"expected a batch of images (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
        _, c, h, w = x.shape
        if c != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channel(s), got {c} (input shape {tuple(x.shape)})")
        if (h, w) != (self.img_size, self.img_size):
            hint = (
                f"; {h}x{w} is not divisible by patch size {self.patch_size}"
                if h % self.patch_size or w % self.patch_size
                else "; create the model with img_size=... to resample its position embedding"
            )
            raise ValueError(f"expected input size {self.img_size}x{self.img_size}, got {h}x{w}{hint}")
