"""Train and eval pipelines for ViTs (the DeiT recipe) on (B, C, H, W) uint8 batches, driven by AugmentConfig.

Train: random resized crop -> random shift (`translate`, off by default) -> horizontal flip -> RandAugment /
TrivialAugment -> normalize -> random erasing -> Mixup / CutMix with label smoothing. Eval (timm): resize the
shorter side to img_size / crop_pct, bicubic -> centre crop -> normalize. The batched building blocks live in
vitkit.data.augment and are re-exported here.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .augment import (
    apply_op,
    center_crop,
    mixup_cutmix,
    normalize,
    one_hot_smooth,
    parse_auto_augment,
    rand_augment,
    random_erasing,
    random_hflip,
    random_resized_crop,
    random_translate,
    resize,
    to_unit_float,
    trivial_augment,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    img_size: int
    scale: tuple[float, float] = (0.08, 1.0)  # small images (28x28) keep more of the object with (0.35, 1)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    translate: int = 0  # random shift by up to this many pixels per axis, zero fill, no resampling
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-n2"  # "rand-m{M}-n{N}", "trivial" or None
    re_prob: float = 0.25
    mixup: float = 0.8  # Beta alpha; 0 turns Mixup off
    cutmix: float = 1.0  # Beta alpha; 0 turns CutMix off
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875  # eval resizes to img_size / crop_pct before the centre crop

    def __post_init__(self):
        # recipes come from YAML, where tuples arrive as lists
        self.scale, self.ratio = tuple(self.scale), tuple(self.ratio)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        problems = _config_problems(self)
        if problems:
            raise ValueError("invalid AugmentConfig: " + "; ".join(problems))
        parse_auto_augment(self.auto_augment)


def _config_problems(cfg: AugmentConfig) -> list[str]:
    problems = []
    if not isinstance(cfg.img_size, int) or cfg.img_size < 1:
        problems.append(f"img_size must be a positive int, got {cfg.img_size!r}")
    for name in ("scale", "ratio"):
        low_high = getattr(cfg, name)
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
            problems.append(f"{name} must be (min, max) with 0 < min <= max, got {low_high}")
    for name in ("hflip", "re_prob", "mix_prob", "switch_prob"):
        value = getattr(cfg, name)
        if not 0 <= value <= 1:
            problems.append(f"{name} is a probability and must be in [0, 1], got {value}")
    for name in ("mixup", "cutmix"):
        value = getattr(cfg, name)
        if value < 0:
            problems.append(f"{name} is a Beta alpha and must be >= 0 (0 turns it off), got {value}")
    if isinstance(cfg.translate, bool) or not isinstance(cfg.translate, int) or not 0 <= cfg.translate < cfg.img_size:
        problems.append(f"translate is a shift in whole pixels and must be an int in [0, {cfg.img_size}) for "
                        f"img_size {cfg.img_size}, got {cfg.translate!r}")
    if not 0 <= cfg.label_smoothing < 1:
        problems.append(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if len(cfg.mean) not in (1, 3) or len(cfg.std) != len(cfg.mean):
        problems.append(f"mean and std need one value per channel (1 or 3), got {cfg.mean} and {cfg.std}")
    if any(s <= 0 for s in cfg.std):
        problems.append(f"std values must be > 0, got {cfg.std}")
    if not 0 < cfg.crop_pct <= 1:
        problems.append(f"crop_pct must be in (0, 1], got {cfg.crop_pct}")
    return problems


class TrainAugment:
    """(uint8 images (B, C, H, W), class indices (B,), generator) -> (normalized float32 images at img_size,
    soft targets (B, num_classes)). All randomness comes from the generator, so saving its state saves the
    augmentation stream."""

    def __init__(self, cfg: AugmentConfig, num_classes: int):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg, self.num_classes = cfg, num_classes
        self.auto_augment = parse_auto_augment(cfg.auto_augment)

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        x = to_unit_float(images)
        x = random_resized_crop(x, cfg.img_size, cfg.scale, cfg.ratio, generator=generator)
        x = random_translate(x, cfg.translate, generator=generator)
        x = random_hflip(x, cfg.hflip, generator=generator)
        if self.auto_augment is not None:
            x = self.auto_augment(x, generator=generator)
        x = random_erasing(normalize(x, cfg.mean, cfg.std), cfg.re_prob, generator=generator)
        return mixup_cutmix(
            x, targets, self.num_classes, cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.switch_prob,
            cfg.label_smoothing, generator=generator,
        )


def eval_transform(
    x: Tensor,
    size: int,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """timm's eval: shorter side to floor(size / crop_pct), bicubic -> centre crop to size -> normalize."""
    resized = resize(to_unit_float(x), math.floor(size / crop_pct))
    return normalize(center_crop(resized, size), mean, std)


def saved_model_eval_transform(spec, meta: dict, fallback_mean=None, fallback_std=None, pretrained: dict | None = None):
    """`eval_transform` with the parameters `saved_model_eval_params` gives."""
    p = saved_model_eval_params(spec, meta, fallback_mean, fallback_std, pretrained)
    return lambda images: eval_transform(images, p["size"], p["crop_pct"], p["mean"], p["std"])


def saved_model_eval_params(spec, meta: dict, fallback_mean=None, fallback_std=None,
                            pretrained: dict | None = None) -> dict:
    """The eval transform's parameters (size, crop_pct, mean, std) of a saved model: its input size (`spec`, the
    model's InputSpec), and the mean, std and crop_pct its training run recorded in the metadata; else those of
    its weights' `pretrained` cfg (a
    registered name's, or a Hugging Face preprocessor_config.json's); else the fallbacks (the dataset's),
    else 0.5 and no crop. Values that cannot work (std <= 0, crop_pct outside (0, 1], one mean per channel
    missing) are a ValueError."""
    from ..weights.loading import check_metadata

    check_metadata(meta, "saved model metadata (config.json)", in_chans=spec.in_chans)
    pretrained = pretrained or {}
    mean = meta.get("mean") or pretrained.get("mean") or fallback_mean or (0.5,) * spec.in_chans
    std = meta.get("std") or pretrained.get("std") or fallback_std or (0.5,) * spec.in_chans
    if len(mean) != spec.in_chans:  # weights made for RGB, a model refitted to gray: one mean per channel
        mean, std = (sum(mean) / len(mean),) * spec.in_chans, (sum(std) / len(std),) * spec.in_chans
    crop_pct = meta.get("crop_pct") if meta.get("crop_pct") is not None else pretrained.get("crop_pct", 1.0)
    size = spec.img_size[0]  # square inputs: every family's named configs are square
    return {"size": size, "crop_pct": float(crop_pct), "mean": [float(m) for m in mean],
            "std": [float(s) for s in std]}


class EvalTransform:
    """uint8 images (B, C, H, W) -> normalized float32 images (B, C, img_size, img_size)."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def __call__(self, images: Tensor) -> Tensor:
        return eval_transform(images, self.cfg.img_size, self.cfg.crop_pct, self.cfg.mean, self.cfg.std)


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "AugmentConfig", "EvalTransform", "TrainAugment", "apply_op",
    "center_crop", "eval_transform", "mixup_cutmix", "normalize", "one_hot_smooth", "parse_auto_augment",
    "rand_augment", "random_erasing", "random_hflip", "random_resized_crop", "resize", "trivial_augment",
]
