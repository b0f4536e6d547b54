"""Faithfulness of saliency maps: deletion and insertion curves (Petsiuk, Das & Saenko, "RISE: Randomized
Input Sampling for Explanation of Black-box Models", BMVC 2018).

Pixels are ranked by saliency, highest first (ties in map order). Deletion replaces the top fraction k/steps
of them, k = 0..steps, by a substrate and records the target class's softmax probability: a faithful map
makes it fall fast (low AUC). Insertion starts from a substrate and restores the top fraction: a faithful map
makes it rise fast (high AUC). AUC is the trapezoid rule over the fraction in [0, 1].

Substrates, as RISE: deletion replaces pixels by zeros, which for normalised inputs is the dataset's mean
colour (not black, so deletion does not add an out-of-distribution dark blob); insertion starts from the image
blurred with RISE's Gaussian kernel (size 11, sigma 5; edges replicated rather than zero-padded, so the
blur does not darken the border). Either can be replaced with `substrate=`.

A map is only worth something if it beats random ones: `random_baseline` runs the same curves with seeded
random maps, drawn on square cells (by default the model's patch size / total stride, the granularity of a
last-layer Grad-CAM) so that random and explained maps delete regions of the same grain.

Quantus (and captum's sensitivity metrics) would be the libraries here; vitkit keeps these ~100 lines itself
so that every (image, step) variant of a batch goes through the model in large batches, without another
dependency and its torchvision import.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve per image: `probs` (B, steps + 1) target probabilities after the
    fractions 0, 1/steps, ..., 1 of pixels were changed, and their `auc` (B,)."""

    probs: torch.Tensor
    auc: torch.Tensor

    @property
    def mean_auc(self) -> float:
        return self.auc.mean().item()


def blur(images: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's insertion substrate: a per-channel Gaussian blur, edges replicated."""
    offsets = torch.arange(size, dtype=images.dtype, device=images.device) - size // 2
    kernel = torch.exp(-offsets.pow(2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    pad = size // 2
    x = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)


def _curve(model: nn.Module, start: torch.Tensor, end: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
           steps: int, batch_size: int) -> Curve:
    """Probabilities of `targets` when the top k/steps of pixels by `maps` come from `end`, the rest from
    `start`, for k = 0..steps; (image, step) variants go through the model `batch_size` at a time."""
    B, _, H, W = start.shape
    if maps.shape != (B, H, W):
        raise ValueError(f"maps must be (B, H, W) = {(B, H, W)} for images {tuple(start.shape)}, "
                         f"got {tuple(maps.shape)}")
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(H * W, device=order.device).expand(B, -1))
    counts = torch.round(torch.linspace(0, H * W, steps + 1, device=order.device)).long()
    probs = torch.empty(B * (steps + 1), device=start.device)
    pairs = torch.cartesian_prod(torch.arange(B), torch.arange(steps + 1))  # row-major: image, then step
    with torch.no_grad():
        for chunk_start, chunk in zip(range(0, len(pairs), batch_size), pairs.split(batch_size), strict=True):
            image, step = chunk.unbind(dim=1)
            changed = (rank[image] < counts[step, None]).view(-1, 1, H, W)
            x = torch.where(changed, end[image], start[image])
            p = model(x).softmax(dim=-1).gather(1, targets[image, None])[:, 0]
            probs[chunk_start:chunk_start + len(chunk)] = p
    probs = probs.view(B, steps + 1)
    return Curve(probs, torch.trapezoid(probs, dx=1.0 / steps, dim=1))


def _targets(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | int | None) -> torch.Tensor:
    """(B,) classes: the predicted ones by default, an int for every image."""
    if targets is None:
        with torch.no_grad():
            return model(images).argmax(dim=-1)
    return torch.as_tensor(targets, device=images.device).long().expand(images.shape[0])


def deletion(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor | int | None = None,
             steps: int = 20, substrate: torch.Tensor | None = None, batch_size: int = 256) -> Curve:
    """Deletion curves of (B, H, W) `maps`: the most salient pixels replaced by `substrate` (default zeros)
    first. Lower AUC is better."""
    end = torch.zeros_like(images) if substrate is None else substrate
    return _curve(model, images, end, maps, _targets(model, images, targets), steps, batch_size)


def insertion(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor | int | None = None,
              steps: int = 20, substrate: torch.Tensor | None = None, batch_size: int = 256) -> Curve:
    """Insertion curves of (B, H, W) `maps`: from `substrate` (default the blurred image), the most salient
    pixels restored first. Higher AUC is better."""
    start = blur(images) if substrate is None else substrate
    return _curve(model, start, images, maps, _targets(model, images, targets), steps, batch_size)


def random_maps(shape: tuple[int, int, int], cell: int = 1, seed: int = 0) -> torch.Tensor:
    """(B, H, W) seeded uniform random maps, constant on `cell` x `cell` squares."""
    B, H, W = shape
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(B, -(-H // cell), -(-W // cell), generator=generator)
    return coarse.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)[:, :H, :W]


def random_baseline(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | int | None = None,
                    steps: int = 20, repeats: int = 3, seed: int = 0, cell: int = 1, batch_size: int = 256
                    ) -> dict[str, Curve]:
    """Deletion and insertion curves of random maps (`random_maps` with seeds seed, seed + 1, ...), averaged
    over `repeats` draws: {"deletion": Curve, "insertion": Curve}."""
    targets = _targets(model, images, targets)
    B, _, H, W = images.shape
    runs = {"deletion": [], "insertion": []}
    for repeat in range(repeats):
        maps = random_maps((B, H, W), cell, seed + repeat).to(images.device)
        runs["deletion"].append(deletion(model, images, maps, targets, steps, batch_size=batch_size).probs)
        runs["insertion"].append(insertion(model, images, maps, targets, steps, batch_size=batch_size).probs)
    result = {}
    for name, curves in runs.items():
        probs = torch.stack(curves).mean(dim=0)
        result[name] = Curve(probs, torch.trapezoid(probs, dx=1.0 / steps, dim=1))
    return result


def faithfulness_report(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | int | None,
                        maps_by_method: dict[str, torch.Tensor], steps: int = 20, seed: int = 0, repeats: int = 3,
                        cell: int | None = None, batch_size: int = 256) -> dict:
    """Mean deletion / insertion AUCs of each method's (B, H, W) maps against random maps:

        {"methods": {name: {"deletion_auc", "insertion_auc", "beats_random"}},
         "random": {"deletion_auc", "insertion_auc"}}

    `beats_random`: deletion AUC below random's and insertion AUC above it. `targets` None: the predicted
    classes. `cell` (random maps' square side in pixels) defaults to `feature_info[-1].reduction`, or 1 for a
    model without feature_info.
    """
    targets = _targets(model, images, targets)
    if cell is None:
        info = getattr(model, "feature_info", None)
        cell = info[-1].reduction if info else 1
    random = random_baseline(model, images, targets, steps, repeats, seed, cell, batch_size)
    random_numbers = {"deletion_auc": random["deletion"].mean_auc, "insertion_auc": random["insertion"].mean_auc}
    methods = {}
    for name, maps in maps_by_method.items():
        deleted = deletion(model, images, maps, targets, steps, batch_size=batch_size).mean_auc
        inserted = insertion(model, images, maps, targets, steps, batch_size=batch_size).mean_auc
        methods[name] = {"deletion_auc": deleted, "insertion_auc": inserted,
                         "beats_random": deleted < random_numbers["deletion_auc"]
                         and inserted > random_numbers["insertion_auc"]}
    return {"methods": methods, "random": random_numbers}
