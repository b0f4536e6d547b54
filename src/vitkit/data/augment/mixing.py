"""timm's Mixup / CutMix in batch mode: one lambda per batch, each image paired with its mirror x.flip(0)."""

import math

import numpy as np
import torch
from torch import Tensor


def one_hot_smooth(target: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """(B,) class indices -> (B, K) float32: 1 - smoothing + smoothing/K on the target, smoothing/K off it."""
    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    soft = torch.full((len(target), num_classes), off_value)
    return soft.scatter_(1, target.view(-1, 1).long(), on_value)


def _beta(alpha: float, generator: torch.Generator) -> float:
    # torch has no Beta (or Gamma) sampler that takes a Generator, so numpy's is seeded from ours
    seed = int(torch.randint(2**62, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _sample_mix(
    mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float, generator: torch.Generator
) -> tuple[float, bool]:
    """(lambda, use_cutmix) for one batch, in timm's order of draws."""
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or torch.rand((), generator=generator) >= prob:
        return 1.0, False
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = bool(torch.rand((), generator=generator) < switch_prob)
    else:
        use_cutmix = cutmix_alpha > 0
    return _beta(cutmix_alpha if use_cutmix else mixup_alpha, generator), use_cutmix


def _cutmix_box(height: int, width: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of about (1 - lam) of the image, centred anywhere, clipped."""
    cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
    cy = int(torch.randint(height, (), generator=generator))
    cx = int(torch.randint(width, (), generator=generator))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def mixup_cutmix(
    x: Tensor,
    target: Tensor,
    num_classes: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    label_smoothing: float = 0.1,
    *,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """With probability `prob`, mix the batch with its mirror by Mixup or CutMix (CutMix chosen with
    `switch_prob` when both alphas are > 0). Returns (mixed float images, smoothed soft targets (B, K))."""
    if not x.is_floating_point():
        raise TypeError(f"mixup_cutmix works on float images, got {x.dtype}")
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup and cutmix alphas must be >= 0 (0 turns one off), "
                         f"got {mixup_alpha}, {cutmix_alpha}")
    lam, use_cutmix = _sample_mix(mixup_alpha, cutmix_alpha, prob, switch_prob, generator)
    if use_cutmix:
        height, width = x.shape[-2:]
        top, bottom, left, right = _cutmix_box(height, width, lam, generator)
        x = x.clone()
        x[..., top:bottom, left:right] = x.flip(0)[..., top:bottom, left:right]
        # the clipped box can be smaller than asked for: the label weight follows the pixels actually pasted
        lam = 1 - (bottom - top) * (right - left) / (height * width)
    elif lam < 1:
        x = torch.lerp(x.flip(0), x, lam)
    soft = one_hot_smooth(target, num_classes, label_smoothing)
    return x, soft * lam + soft.flip(0) * (1 - lam)
