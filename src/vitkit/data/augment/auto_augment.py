"""RandAugment and TrivialAugment with torchvision's op set and magnitude ranges, drawn per image, run per op.

Every image draws its own op; the batch is then split by op and each op runs once on its subset. The
geometric ops are affine maps, so all images that drew any of them share a single grid_sample.
Images are uint8 or float in [0, 1]; the ops work in float and give back the input dtype.
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .convert import to_dtype, to_unit_float
from .geometry import warp

NUM_LEVELS = 30  # magnitudes are torchvision's 31 bins, 0..30

# op -> (magnitude at level 30, whether it gets a random sign)
RAND_AUGMENT_RANGES = {
    "Identity": (0.0, False),
    "ShearX": (0.3, True),
    "ShearY": (0.3, True),
    "TranslateX": (150 / 331, True),  # fraction of the side
    "TranslateY": (150 / 331, True),
    "Rotate": (30.0, True),  # degrees
    "Brightness": (0.9, True),  # blend factor is 1 + magnitude
    "Color": (0.9, True),
    "Contrast": (0.9, True),
    "Sharpness": (0.9, True),
    "Posterize": (4.0, False),  # bits dropped
    "Solarize": (1.0, False),  # fraction of the intensity range inverted
    "AutoContrast": (0.0, False),
    "Equalize": (0.0, False),
}
TRIVIAL_AUGMENT_RANGES = {
    **RAND_AUGMENT_RANGES,
    "ShearX": (0.99, True),
    "ShearY": (0.99, True),
    # torchvision's TrivialAugmentWide shifts up to 32 pixels at any size; 32/224 keeps that at ImageNet
    # size without shifting a 28x28 image out of view
    "TranslateX": (32 / 224, True),
    "TranslateY": (32 / 224, True),
    "Rotate": (135.0, True),
    "Brightness": (0.99, True),
    "Color": (0.99, True),
    "Contrast": (0.99, True),
    "Sharpness": (0.99, True),
    "Posterize": (6.0, False),
}


def _identity_maps(n: int) -> Tensor:
    return torch.eye(3).repeat(n, 1, 1)


def _shear_x(m: Tensor, height: int, width: int) -> Tensor:
    maps = _identity_maps(len(m))
    maps[:, 0, 1] = m  # about the top-left corner, as torchvision's RandAugment
    return maps


def _shear_y(m: Tensor, height: int, width: int) -> Tensor:
    maps = _identity_maps(len(m))
    maps[:, 1, 0] = m
    return maps


def _translate_x(m: Tensor, height: int, width: int) -> Tensor:
    maps = _identity_maps(len(m))
    maps[:, 0, 2] = -m * width
    return maps


def _translate_y(m: Tensor, height: int, width: int) -> Tensor:
    maps = _identity_maps(len(m))
    maps[:, 1, 2] = -m * height
    return maps


def _rotate(m: Tensor, height: int, width: int) -> Tensor:
    """Positive degrees turn the image counter-clockwise about its centre, as torchvision."""
    cos, sin = torch.deg2rad(m).cos(), torch.deg2rad(m).sin()
    cx, cy = width / 2, height / 2
    maps = _identity_maps(len(m))
    maps[:, 0, 0], maps[:, 0, 1], maps[:, 0, 2] = cos, -sin, cx - cos * cx + sin * cy
    maps[:, 1, 0], maps[:, 1, 1], maps[:, 1, 2] = sin, cos, cy - sin * cx - cos * cy
    return maps


def _blend(x: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """PIL's ImageEnhance: factor 0 gives the degenerate image, 1 the original, above 1 extrapolates."""
    return torch.lerp(degenerate, x, factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def _grayscale(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _to_levels(x: Tensor) -> Tensor:
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def _brightness(x: Tensor, m: Tensor) -> Tensor:
    return (x * (1 + m).view(-1, 1, 1, 1)).clamp_(0, 1)  # a blend with black


def _color(x: Tensor, m: Tensor) -> Tensor:
    return _blend(x, _grayscale(x), 1 + m)  # a gray image is its own grayscale: identity


def _contrast(x: Tensor, m: Tensor) -> Tensor:
    return _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), 1 + m)


def _sharpness(x: Tensor, m: Tensor) -> Tensor:
    # PIL's smoothing kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as a 3x3 box sum plus 4x the centre, from
    # shifted views: several times faster on CPU than a depthwise conv2d or avg_pool2d
    column_sums = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box_sums = column_sums[..., :-2] + column_sums[..., 1:-1] + column_sums[..., 2:]
    blurred = x.clone()  # PIL and torchvision leave the one-pixel border unblurred
    blurred[..., 1:-1, 1:-1] = (box_sums + 4 * x[..., 1:-1, 1:-1]) / 13
    return _blend(x, blurred, 1 + m)


def _posterize(x: Tensor, m: Tensor) -> Tensor:
    keep_high_bits = (256 - 2 ** m.round().long()).to(torch.uint8)
    return (_to_levels(x) & keep_high_bits.view(-1, 1, 1, 1)).to(x.dtype) / 255


def _solarize(x: Tensor, m: Tensor) -> Tensor:
    # threshold from 256 down to 0 uint8 levels (timm) so level 0 is an identity; torchvision starts at 255
    # and inverts pure white even at magnitude 0
    threshold = (256 * (1 - m)).view(-1, 1, 1, 1)
    return torch.where(x * 255 >= threshold, 1 - x, x)


def _autocontrast(x: Tensor, m: Tensor) -> Tensor:
    low, high = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
    flat = high <= low
    return torch.where(flat, x, ((x - low) / (high - low).masked_fill(flat, 1)).clamp(0, 1))


def _equalize(x: Tensor, m: Tensor) -> Tensor:
    """torchvision's per-channel histogram equalization, all images and channels at once."""
    n, c, h, w = x.shape
    levels = _to_levels(x).flatten(2).long()
    hist = torch.zeros(n, c, 256, dtype=torch.long).scatter_add_(2, levels, torch.ones_like(levels))
    brightest_count = hist.gather(2, levels.amax(dim=2, keepdim=True))
    step = (h * w - brightest_count) // 255
    lut = (hist.cumsum(2) + step // 2) // step.clamp(min=1)
    lut = F.pad(lut, (1, 0))[..., :-1].clamp(0, 255)
    equalized = lut.gather(2, levels).view_as(x).to(x.dtype) / 255
    # a channel with (nearly) a single level has no histogram to spread
    return torch.where((step == 0).view(n, c, 1, 1), x, equalized)


GEOMETRIC_OPS = {
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Rotate": _rotate,
}
PIXEL_OPS = {
    "Identity": lambda x, m: x,
    "Brightness": _brightness,
    "Color": _color,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
}


def apply_op(x: Tensor, name: str, magnitude: Tensor) -> Tensor:
    """One named op on float [0, 1] images with a signed magnitude per image, in the units of the ranges."""
    if name in GEOMETRIC_OPS:
        return warp(x, GEOMETRIC_OPS[name](magnitude, *x.shape[-2:]), tuple(x.shape[-2:]))
    return PIXEL_OPS[name](x, magnitude)


def _apply_random_op(
    x: Tensor, ranges: dict[str, tuple[float, bool]], levels: Tensor, generator: torch.Generator
) -> Tensor:
    """Each image gets an op drawn uniformly from `ranges`, at its level in [0, 1] and a random sign."""
    names = list(ranges)
    op_index = torch.randint(len(names), (len(x),), generator=generator)
    negate = torch.rand(len(x), generator=generator) < 0.5
    top_magnitude = torch.tensor([ranges[name][0] for name in names])[op_index]
    signed = torch.tensor([ranges[name][1] for name in names])[op_index]
    magnitude = torch.where(signed & negate, -1.0, 1.0) * top_magnitude * levels

    height, width = x.shape[-2:]
    # every row of `out` is written below: by its pixel op, or by the one warp shared by all geometric ops
    out, maps, warped = torch.empty_like(x), _identity_maps(len(x)), torch.zeros(len(x), dtype=torch.bool)
    for k, name in enumerate(names):
        rows = (op_index == k).nonzero()[:, 0]
        if len(rows) == 0:
            continue
        if name in GEOMETRIC_OPS:
            maps[rows] = GEOMETRIC_OPS[name](magnitude[rows], height, width)
            warped[rows] = True
        else:
            out[rows] = PIXEL_OPS[name](x[rows], magnitude[rows])
    if warped.any():
        out[warped] = warp(x[warped], maps[warped], (height, width))
    return out


def rand_augment(x: Tensor, num_ops: int = 2, magnitude: int = 9, *, generator: torch.Generator) -> Tensor:
    """torchvision's RandAugment: `num_ops` ops in a row per image, drawn with replacement, one magnitude."""
    if not 0 <= magnitude <= NUM_LEVELS or num_ops < 0:
        raise ValueError(f"rand_augment needs 0 <= magnitude <= {NUM_LEVELS} and num_ops >= 0, "
                         f"got magnitude={magnitude}, num_ops={num_ops}")
    dtype, x = x.dtype, to_unit_float(x)
    levels = torch.full((len(x),), magnitude / NUM_LEVELS)
    for _ in range(num_ops):
        x = _apply_random_op(x, RAND_AUGMENT_RANGES, levels, generator)
    return to_dtype(x, dtype)


def trivial_augment(x: Tensor, *, generator: torch.Generator) -> Tensor:
    """torchvision's TrivialAugmentWide: one op per image at a magnitude drawn uniformly per image."""
    dtype, x = x.dtype, to_unit_float(x)
    levels = torch.randint(NUM_LEVELS + 1, (len(x),), generator=generator) / NUM_LEVELS
    return to_dtype(_apply_random_op(x, TRIVIAL_AUGMENT_RANGES, levels, generator), dtype)


AUTO_AUGMENT_FORMS = (
    '"rand-m{M}-n{N}" (M in 0..30, default 9; N >= 0, default 2; either part may be left out), '
    '"trivial", or None'
)


def parse_auto_augment(spec: str | None) -> Callable[..., Tensor] | None:
    """timm-style spec -> fn(x, generator=...) or None. Raises ValueError naming the bad part."""
    if spec is None or spec == "none":
        return None
    if not isinstance(spec, str):
        raise ValueError(f"auto_augment must be a string or None, got {spec!r}; "
                         f"valid forms: {AUTO_AUGMENT_FORMS}")
    if spec == "trivial":
        return trivial_augment
    policy, *parts = spec.split("-")
    if policy != "rand":
        raise ValueError(f"unknown auto_augment policy {policy!r} in {spec!r}; "
                         f"valid forms: {AUTO_AUGMENT_FORMS}")
    settings = {"m": 9, "n": 2}
    for part in parts:
        key, value = part[:1], part[1:]
        if key not in settings or not value.isdigit():
            raise ValueError(f"bad part {part!r} in auto_augment {spec!r}; valid forms: {AUTO_AUGMENT_FORMS}")
        settings[key] = int(value)
    if settings["m"] > NUM_LEVELS:
        raise ValueError(f"magnitude m{settings['m']} in auto_augment {spec!r} is above {NUM_LEVELS}; "
                         f"valid forms: {AUTO_AUGMENT_FORMS}")
    return partial(rand_augment, num_ops=settings["n"], magnitude=settings["m"])
