"""Signs that a self-supervised representation collapsed (every image mapped to nearly the same vector,
or to a low-dimensional subspace): what the DINO and DINOv2 issue trackers debug by hand."""

import torch
import torch.nn.functional as F


@torch.no_grad()
def feature_std(features: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension standard deviation of L2-normalised features: about
    1/sqrt(D) for well-spread features, 0 when every image gets the same vector."""
    return F.normalize(features.float(), dim=1).std(dim=0).mean().item()


@torch.no_grad()
def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred features (Roy & Vetterli, 2007):
    1 when all images lie on one direction, up to min(N, D) when every direction is used equally."""
    x = features.float()
    x = x - x.mean(dim=0)
    s = torch.linalg.svdvals(x)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum()).item()
