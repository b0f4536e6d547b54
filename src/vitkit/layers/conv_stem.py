"""Image to tokens through a few strided 3x3 convolutions ("early convolutions", Xiao et al. 2021).

A drop-in for `PatchEmbed`: the same attributes and output (B, N, D). Each stage is a 3x3 convolution,
batch norm and ReLU; a stride-2 stage halves the image (padding 1, so an odd size rounds up:
28 -> 14 -> 7 -> 4). A 1x1 convolution projects to the embedding width. On small images this gives a
ViT the locality a 4x4 or 7x7 patch lacks, at a small fraction of the transformer's cost.
"""

import torch
from torch import nn

from .patch_embed import check_image_input


class ConvStem(nn.Module):
    def __init__(
        self, img_size: int, in_chans: int, embed_dim: int, channels: tuple[int, ...], strides: tuple[int, ...] = (),
        dynamic_img_size: bool = False,
    ):
        super().__init__()
        strides = tuple(strides) or (2,) * len(channels)
        if not channels or len(strides) != len(channels) or any(s not in (1, 2) for s in strides):
            raise ValueError(f"a conv stem needs one stride (1 or 2) per stage; got channels {channels}, "
                             f"strides {strides}")
        self.img_size = img_size
        self.in_chans = in_chans
        self.strides = strides
        self.dynamic_img_size = dynamic_img_size  # any input size: the token grid follows it
        self.patch_size = 2 ** strides.count(2)  # total stride
        stages, width = [], in_chans
        for out, stride in zip(channels, strides, strict=True):
            stages += [nn.Conv2d(width, out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.stem = nn.Sequential(*stages)
        self.proj = nn.Conv2d(width, embed_dim, kernel_size=1)
        self.grid_size = self.output_grid(img_size, img_size)[0]
        self.num_patches = self.grid_size**2

    def output_grid(self, h: int, w: int) -> tuple[int, int]:
        """The token grid of an h x w input: each stride-2 stage (padding 1) halves it, rounding up."""
        for stride in self.strides:
            h, w = (h + stride - 1) // stride, (w + stride - 1) // stride
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, self.in_chans, None if self.dynamic_img_size else self.img_size)
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)
