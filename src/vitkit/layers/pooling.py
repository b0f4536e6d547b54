"""Reduce a token sequence to one vector per image."""

import torch

POOL_TYPES = ("token", "avg", "max", "avgmax", "gem", "")


def pool_tokens(x: torch.Tensor, pool_type: str, num_prefix_tokens: int, gem_p: float = 3.0) -> torch.Tensor:
    if pool_type == "token":
        return x[:, 0]
    if pool_type == "":
        return x
    patches = x[:, num_prefix_tokens:]
    if pool_type == "avg":
        return patches.mean(dim=1)
    if pool_type == "max":
        return patches.amax(dim=1)
    if pool_type == "avgmax":
        return 0.5 * (patches.mean(dim=1) + patches.amax(dim=1))
    if pool_type == "gem":
        # Generalized mean needs positive inputs; clamping is the usual convention.
        return patches.clamp(min=1e-6).pow(gem_p).mean(dim=1).pow(1.0 / gem_p)
    raise ValueError(f"unknown global_pool {pool_type!r}; expected one of {POOL_TYPES}")


MAP_POOL_TYPES = ("avg", "max", "avgmax", "")  # over the spatial dims of a (B, C, H, W) feature map


class GlobalPool2d(torch.nn.Module):
    """timm's SelectAdaptivePool2d(flatten=False) over (B, C, H, W) maps: keeps (B, C, 1, 1), so an NCHW norm
    can follow (ConvNeXt's and MetaFormer's heads); "" leaves the map as it is."""

    def __init__(self, pool_type: str):
        super().__init__()
        if pool_type not in MAP_POOL_TYPES:
            raise ValueError(f"global_pool={pool_type!r} is not one of {MAP_POOL_TYPES}")
        self.pool_type = pool_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "avg":
            return x.mean((2, 3), keepdim=True)
        if self.pool_type == "max":
            return x.amax((2, 3), keepdim=True)
        if self.pool_type == "avgmax":
            return 0.5 * (x.mean((2, 3), keepdim=True) + x.amax((2, 3), keepdim=True))
        return x

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"
