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
