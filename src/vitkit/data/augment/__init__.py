"""Batched, seedable image augmentation on (B, C, H, W) tensors; every random op takes a torch.Generator."""

from .auto_augment import apply_op, parse_auto_augment, rand_augment, trivial_augment
from .convert import normalize, to_unit_float
from .erasing import random_erasing
from .geometry import center_crop, random_hflip, random_resized_crop, random_translate, resize
from .mixing import mixup_cutmix, one_hot_smooth

__all__ = [
    "apply_op", "center_crop", "mixup_cutmix", "normalize", "one_hot_smooth", "parse_auto_augment",
    "rand_augment", "random_erasing", "random_hflip", "random_resized_crop", "random_translate", "resize",
    "to_unit_float", "trivial_augment",
]
