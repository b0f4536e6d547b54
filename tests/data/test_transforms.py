import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitkit.data.augment.auto_augment import GEOMETRIC_OPS, PIXEL_OPS
from vitkit.data.transforms import (
    AugmentConfig,
    EvalTransform,
    TrainAugment,
    apply_op,
    center_crop,
    eval_transform,
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
    trivial_augment,
)

MAGNITUDE_OPS = [name for name in [*PIXEL_OPS, *GEOMETRIC_OPS] if name not in ("AutoContrast", "Equalize")]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(batch: int = 8, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=gen(seed))


def config(channels: int, **overrides) -> AugmentConfig:
    return AugmentConfig(img_size=24, mean=(0.5,) * channels, std=(0.25,) * channels, **overrides)


# ---- the composed pipelines ------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_train_augment_shapes_and_soft_targets(channels):
    augment = TrainAugment(config(channels), num_classes=5)
    x, y = augment(images(channels=channels), torch.arange(8) % 5, gen())
    assert x.shape == (8, channels, 24, 24) and x.dtype == torch.float32
    assert y.shape == (8, 5) and torch.allclose(y.sum(1), torch.ones(8))


@pytest.mark.parametrize("channels", [1, 3])
def test_eval_transform_shapes(channels):
    out = EvalTransform(config(channels))(images(batch=2, channels=channels, size=40))
    assert out.shape == (2, channels, 24, 24) and out.dtype == torch.float32


def test_train_augment_reproducible_from_generator_state_without_global_rng():
    augment, x, y = TrainAugment(config(3), num_classes=5), images(), torch.arange(8) % 5
    g = gen(7)
    state = g.get_state()
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    first = augment(x, y, g)
    g.set_state(state)
    again = augment(x, y, g)
    other = augment(x, y, gen(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, g: random_resized_crop(x, 16, generator=g),
        lambda x, g: random_hflip(x, generator=g),
        lambda x, g: rand_augment(x, generator=g),
        lambda x, g: trivial_augment(x, generator=g),
        lambda x, g: random_erasing(x.float(), p=1.0, generator=g),
        lambda x, g: mixup_cutmix(x.float(), torch.arange(8), 8, generator=g)[0],
        lambda x, g: random_translate(x, 3, generator=g),
    ],
    ids=["crop", "hflip", "randaug", "trivial", "erasing", "mix", "shift"],
)
def test_each_random_op_follows_its_seed(fn):
    x = images()
    assert torch.equal(fn(x, gen(1)), fn(x, gen(1)))
    assert not torch.equal(fn(x, gen(1)), fn(x, gen(2)))


def test_eval_transform_matches_hand_computed_sizes():
    x = torch.full((1, 3, 60, 80), 128, dtype=torch.uint8)
    resized = resize(x, 28)
    assert resized.shape[-2:] == (28, 37) and resized.dtype == torch.uint8  # 28 * 80 / 60 rounded down
    out = eval_transform(x, 24, crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert out.shape == (1, 3, 24, 24)  # resized to floor(24 / 0.875) = 27, then cropped
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.5) / 0.5), atol=1e-5)
    grid = torch.arange(25.0).view(1, 1, 5, 5)
    assert torch.equal(center_crop(grid, 3), grid[..., 1:4, 1:4])


def test_normalize_uint8_and_float_agree():
    x = images(batch=2)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normalize(x, mean, std), expected, atol=1e-5)
    assert torch.allclose(normalize(x.float() / 255, mean, std), expected, atol=1e-5)
    with pytest.raises(ValueError, match="one value per channel"):
        normalize(images(channels=1), mean, std)


# ---- crop and flip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 48])
def test_full_crop_equals_plain_bilinear_resize(size):
    x = images().float() / 255
    cropped = random_resized_crop(x, size, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=gen())
    expected = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    assert torch.allclose(cropped, expected, atol=1e-5)


def test_crop_keeps_uint8_and_falls_back_to_centre_crop():
    # a 1:1 box of the whole area fits no 32x64 image: torchvision's fallback is the centred 32x32 square
    x = torch.arange(64.0).repeat(1, 1, 32, 1)
    out = random_resized_crop(x, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=gen())
    assert torch.allclose(out, x[..., 16:48], atol=1e-4)
    assert random_resized_crop(images(), 16, generator=gen()).dtype == torch.uint8


def test_hflip_always_and_never():
    x = images()
    assert torch.equal(random_hflip(x, p=1.0, generator=gen()), x.flip(-1))
    assert torch.equal(random_hflip(x, p=0.0, generator=gen()), x)


def test_random_shift_moves_each_image_by_whole_pixels_with_zero_fill():
    x = images(batch=64, channels=2, size=12)
    shifted = random_translate(x, 2, generator=gen())
    assert shifted.shape == x.shape and shifted.dtype == x.dtype
    assert torch.equal(random_translate(x, 0, generator=gen()), x)
    padded = F.pad(x, (2, 2, 2, 2))
    offsets = set()
    for image, out in zip(padded, shifted, strict=True):  # each output is one 12x12 window of its zero-padded input
        found = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(image[:, dy:dy + 12, dx:dx + 12], out)]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 12  # of the 25 shifts, most occur in 64 draws; the channels move together
    with pytest.raises(ValueError, match="translate must be a number of pixels >= 0"):
        random_translate(x, -1, generator=gen())


# ---- RandAugment / TrivialAugment --------------------------------------------------------------------


@pytest.mark.parametrize("name", MAGNITUDE_OPS)
@pytest.mark.parametrize("channels", [1, 3])
def test_op_at_magnitude_zero_is_identity(name, channels):
    x = images(batch=4, channels=channels).float() / 255
    assert torch.allclose(apply_op(x, name, torch.zeros(4)), x, atol=1e-5)


def test_solarize_posterize_brightness_by_hand():
    x = torch.tensor([0, 100, 200, 255], dtype=torch.float32).view(1, 1, 2, 2) / 255

    def levels(name, magnitude):
        return (apply_op(x, name, torch.tensor([magnitude])) * 255).round().flatten().tolist()

    assert levels("Solarize", 0.5) == [0, 100, 55, 0]  # inverts levels >= 128
    assert levels("Posterize", 4.0) == [0, 96, 192, 240]  # keeps the top 4 bits
    assert levels("Brightness", 0.5) == [0, 150, 255, 255]  # x * 1.5, clipped
    assert levels("AutoContrast", 0.0) == [0, 100, 200, 255]  # already spans the full range


def test_translate_by_whole_pixels_shifts_in_zeros():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4) / 16
    shifted = apply_op(x, "TranslateX", torch.tensor([0.25]))  # one pixel to the right
    assert torch.allclose(shifted[..., 1:], x[..., :-1], atol=1e-6)
    assert torch.equal(shifted[..., 0], torch.zeros(1, 1, 4))


def test_equalize_spreads_a_narrow_histogram():
    levels = torch.tensor([10.0, 11, 12, 13]).repeat_interleave(256).view(1, 1, 32, 32)
    out = (apply_op(levels.repeat(1, 3, 1, 1) / 255, "Equalize", torch.zeros(1)) * 255).round()
    assert out[0, 0].unique().tolist() == [0, 85, 171, 255]  # as PIL's ImageOps.equalize


def test_color_is_identity_on_gray():
    x = images(batch=4, channels=1).float() / 255
    assert torch.equal(apply_op(x, "Color", torch.full((4,), 0.9)), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_auto_augment_keeps_dtype_and_shape(channels):
    x = images(batch=32, channels=channels)
    for out in (rand_augment(x, generator=gen()), trivial_augment(x, generator=gen())):
        assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(rand_augment(x, num_ops=0, generator=gen()), x)
    assert not torch.equal(rand_augment(x, generator=gen()), x)


def test_auto_augment_specs():
    assert parse_auto_augment(None) is None
    assert parse_auto_augment("trivial") is trivial_augment
    assert parse_auto_augment("rand-m9-n2").keywords == {"num_ops": 2, "magnitude": 9}
    assert parse_auto_augment("rand-n3-m15").keywords == {"num_ops": 3, "magnitude": 15}
    assert parse_auto_augment("rand").keywords == {"num_ops": 2, "magnitude": 9}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("augmix-m3", "unknown auto_augment policy 'augmix'"),
        ("rand-m9-x2", "bad part 'x2'"),
        ("rand-mfoo", "bad part 'mfoo'"),
        ("rand-m31", "above 30"),
        (3, "must be a string or None"),
    ],
)
def test_bad_auto_augment_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_auto_augment(spec)
    assert "rand-m{M}-n{N}" in str(error.value)


# ---- random erasing ----------------------------------------------------------------------------------


def test_random_erasing_never_and_always():
    x = torch.zeros(16, 3, 32, 32) + 100  # far from N(0, 1), so every erased pixel shows
    assert torch.equal(random_erasing(x, p=0.0, generator=gen()), x)
    erased = random_erasing(x, p=1.0, generator=gen()) != x
    for mask in erased.all(dim=1):  # every channel of an erased pixel changes
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert mask.sum() == box_area  # one solid rectangle
        assert 0.02 * 1024 * 0.8 <= box_area <= 1024 / 3 * 1.2


# ---- Mixup / CutMix ----------------------------------------------------------------------------------


def test_one_hot_smooth_values():
    soft = one_hot_smooth(torch.tensor([2, 0]), num_classes=4, smoothing=0.1)
    assert torch.allclose(soft[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(soft.sum(1), torch.ones(2))


def constant_batch(batch: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i and has class i, so mixed pixels and targets can be traced."""
    return torch.arange(float(batch)).view(-1, 1, 1, 1).expand(batch, 3, 16, 16).clone(), torch.arange(batch)


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_target_weight_equals_pasted_area(seed):
    x, y = constant_batch()
    mixed, soft = mixup_cutmix(x, y, 6, mixup_alpha=0.0, label_smoothing=0.0, generator=gen(seed))
    pasted = (mixed[0] != x[0]).float().mean()  # image 0 is pasted from its mirror, image 5
    assert torch.allclose(soft[0, 0], 1 - pasted) and torch.allclose(soft[0, 5], pasted)
    assert torch.allclose(soft.sum(1), torch.ones(6))


def test_mixup_blends_images_and_targets_by_the_same_lambda():
    x, y = constant_batch()
    mixed, soft = mixup_cutmix(x, y, 6, cutmix_alpha=0.0, label_smoothing=0.1, generator=gen(3))
    on, off = 1 - 0.1 + 0.1 / 6, 0.1 / 6
    lam = (soft[0, 0] - off) / (on - off)
    assert torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[5], atol=1e-5)
    assert torch.allclose(soft.sum(1), torch.ones(6))


def test_mix_prob_zero_only_smooths_labels():
    x, y = constant_batch()
    mixed, soft = mixup_cutmix(x, y, 6, prob=0.0, label_smoothing=0.1, generator=gen())
    assert torch.equal(mixed, x) and torch.equal(soft, one_hot_smooth(y, 6, 0.1))


# ---- config validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hflip": 1.5}, r"hflip is a probability and must be in \[0, 1\], got 1.5"),
        ({"scale": (1.0, 0.5)}, r"scale must be \(min, max\) with 0 < min <= max"),
        ({"ratio": (0.0, 1.0)}, r"ratio must be \(min, max\)"),
        ({"mixup": -1.0}, "mixup is a Beta alpha"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
        ({"mean": (0.5, 0.5)}, "one value per channel"),
        ({"auto_augment": "rand-m99"}, "above 30"),
        ({"translate": 32}, r"translate is a shift in whole pixels and must be an int in \[0, 32\) for img_size 32, "
                            r"got 32"),
        ({"translate": 1.5}, r"translate .* got 1.5"),
    ],
)
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(img_size=32, **overrides)


def test_config_accepts_yaml_lists():
    cfg = AugmentConfig(img_size=28, scale=[0.35, 1.0], mean=[0.5], std=[0.5])
    assert cfg.scale == (0.35, 1.0) and cfg.mean == (0.5,)
    assert math.isclose(cfg.ratio[1], 4 / 3)
