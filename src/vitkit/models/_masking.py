"""Masked embedding for token-sequence models (the `TokenSequence` capability): what masked pretraining
(MAE) asks a backbone for. MAE adds position embeddings to every patch token and then keeps a random
subset; the prefix tokens (class, registers) are always kept."""

import torch
from torch import nn

from ._protocol import TokenSequence


def require_token_sequence(model: nn.Module, tool: str) -> None:
    """A clear error when `model` is not one token sequence through its blocks (ViT-like), naming the tool."""
    if not isinstance(model, TokenSequence):
        raise ValueError(f"{tool} needs a token-sequence backbone (ViT, DeiT, DINOv2, CLIP, SigLIP: patch tokens "
                         f"through one stack of blocks); {type(model).__name__} is not one (hierarchical stages or "
                         "convolutions have no per-patch token to mask)")


def random_keep(batch: int, num_patches: int, keep: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep indices (B, keep), sorted; mask (B, num_patches) with True where a patch is hidden), drawn with
    `generator` (so every process draws the same masks for the global batch)."""
    noise = torch.rand(batch, num_patches, generator=generator)
    order = noise.argsort(dim=1)
    kept = order[:, :keep].sort(dim=1).values
    mask = torch.ones(batch, num_patches, dtype=torch.bool)
    mask.scatter_(1, kept, False)
    return kept, mask


def embed_kept(model: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The token sequence of images `x` with only the patch tokens at `keep` (B, K): prefix tokens first,
    position embeddings included, ready for the model's `forward_tokens`."""
    tokens = model.embed(x)
    prefix = model.num_prefix_tokens
    patches = tokens[:, prefix:]
    kept = torch.gather(patches, 1, keep.to(tokens.device).unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return torch.cat([tokens[:, :prefix], kept], dim=1)
