"""A learnable synthetic dataset for smoke tests: no files, fully deterministic, easy for a tiny ViT."""

import colorsys
import math

import torch

from .base import DatasetInfo, InMemoryImageDataset, channel_stats

NUM_CLASSES = 10
DEFAULT_NUM_TRAIN = 512
DEFAULT_IMG_SIZE = 32
STRIPE_CYCLES = 4  # per image side, so the pattern scales with img_size
STRIPE_AMPLITUDE = 0.25
NOISE_STD = 0.15
STREAM = {"train": 0, "test": 1}  # separate random streams keep test images out of the train split


def class_colors() -> torch.Tensor:
    """One muted colour per class, evenly spaced around the hue wheel: (NUM_CLASSES, 3) in [0, 1]."""
    return torch.tensor([colorsys.hsv_to_rgb(c / NUM_CLASSES, 0.6, 0.7) for c in range(NUM_CLASSES)])


def render(labels: torch.Tensor, img_size: int, generator: torch.Generator) -> torch.Tensor:
    """Each class is its own colour plus stripes at its own angle; phase and pixel noise vary per image."""
    n = len(labels)
    coords = torch.arange(img_size, dtype=torch.float32) / img_size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    angle = (labels.float() * math.pi / NUM_CLASSES).view(n, 1, 1)
    phase = (2 * math.pi * torch.rand(n, generator=generator)).view(n, 1, 1)
    stripes = torch.cos(2 * math.pi * STRIPE_CYCLES * (x * angle.cos() + y * angle.sin()) + phase)
    images = class_colors()[labels].view(n, 3, 1, 1) + STRIPE_AMPLITUDE * stripes.unsqueeze(1)
    images = images + NOISE_STD * torch.randn(n, 3, img_size, img_size, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def make_split(num_samples: int, split: str, seed: int, img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2 * seed + STREAM[split])
    labels = (torch.arange(num_samples) % NUM_CLASSES)[torch.randperm(num_samples, generator=generator)]
    return render(labels, img_size, generator), labels


def make_synthetic(split: str, *, num_train: int = DEFAULT_NUM_TRAIN, seed: int = 0,
                   img_size: int = DEFAULT_IMG_SIZE) -> InMemoryImageDataset:
    """`num_train` train images and a quarter as many test images, classes balanced.

    `seed` picks a different draw of images; the class patterns themselves never change.
    """
    if num_train < 1:
        raise ValueError(f"synthetic: number of train samples must be positive, got {num_train}")
    train_images, train_labels = make_split(num_train, "train", seed, img_size)
    mean, std = channel_stats(train_images.split(256))
    info = DatasetInfo(
        name="synthetic",
        num_classes=NUM_CLASSES,
        class_names=tuple(f"pattern{c}" for c in range(NUM_CLASSES)),
        in_chans=3,
        img_size=img_size,
        mean=mean,
        std=std,
    )
    if split == "train":
        return InMemoryImageDataset(train_images, train_labels, info)
    test_images, test_labels = make_split(max(1, num_train // 4), "test", seed, img_size)
    return InMemoryImageDataset(test_images, test_labels, info)
