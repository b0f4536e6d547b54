from pathlib import Path

import numpy as np
import pytest
import torch

from vitkit.data.corruptions import (
    CORRUPTIONS,
    SEVERITY_INDEPENDENT,
    SEVERITY_PARAMS,
    Corrupt,
    corrupt,
    list_corruptions,
)

NAMES = list_corruptions()
EXPECTED_NAMES = {
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "glass_blur", "motion_blur",
    "defocus_blur", "shear", "scale", "rotate", "translate", "brightness", "contrast", "inverse", "flip_lr",
    "flip_ud", "rotate_90", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges", "pixelate",
    "jpeg_compression",
}
# the corruptions that draw no random numbers: the seed cannot change them
NOT_RANDOM = {"brightness", "contrast", "inverse", "flip_lr", "flip_ud", "rotate_90", "gaussian_blur",
              "defocus_blur", "canny_edges", "pixelate", "jpeg_compression"}


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (N, h, w) -> (N, size, size): smooth, like real photographs, unlike blocky nearest upsampling."""
    position = np.linspace(0, images.shape[-1] - 1, size)
    low = np.minimum(position.astype(int), images.shape[-1] - 2)
    frac = position - low
    rows = images[:, low] * (1 - frac)[:, None] + images[:, low + 1] * frac[:, None]
    return rows[:, :, low] * (1 - frac) + rows[:, :, low + 1] * frac


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    """64 sklearn digits as 28 x 28 uint8 images (N, H, W), white on black like Fashion-MNIST."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[:64] / 16
    return np.rint(_upsample(digits, 28) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """16 digits as 32 x 32 colour images (N, 3, H, W): a coloured digit on a coloured background."""
    from sklearn.datasets import load_digits

    digits = _upsample(load_digits().images[:16] / 16, 32)[:, None]
    rng = np.random.default_rng(0)
    ink, paper = rng.uniform(0.5, 1, (16, 3, 1, 1)), rng.uniform(0, 0.4, (16, 3, 1, 1))
    return np.rint((digits * ink + (1 - digits) * paper) * 255).astype(np.uint8)


def _damage(clean: np.ndarray, corrupted: np.ndarray) -> float:
    return float(np.abs(corrupted.astype(np.float64) - clean).mean())


def test_names():
    assert NAMES == sorted(NAMES) == sorted(CORRUPTIONS)
    assert set(NAMES) == EXPECTED_NAMES  # saturate is left out on purpose: see the module docstring
    assert set(SEVERITY_PARAMS) | SEVERITY_INDEPENDENT == EXPECTED_NAMES
    assert all(len(levels) == 5 for levels in SEVERITY_PARAMS.values())


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_dtype(name, gray, rgb):
    for images in (gray, gray[:, None], rgb, gray[:1]):
        out = corrupt(images, name, 3)
        assert out.shape == images.shape and out.dtype == np.uint8
        assert CORRUPTIONS[name](images, 3, np.random.default_rng(0)).shape == images.shape


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_in_seed(name, gray):
    first = corrupt(gray, name, 4, seed=3)
    np.testing.assert_array_equal(first, corrupt(gray.copy(), name, 4, seed=3))
    other_seed = corrupt(gray, name, 4, seed=4)
    assert np.array_equal(first, other_seed) == (name in NOT_RANDOM)


def test_severities_draw_their_own_noise(gray):
    # with one shared stream, the pixels hit at severity 4 would all be hit at severity 5 too
    hit_4, hit_5 = (corrupt(gray, "impulse_noise", severity) != gray for severity in (4, 5))
    assert (hit_4 & ~hit_5).any()


def test_input_is_not_modified(gray):
    before = gray.copy()
    for name in NAMES:
        corrupt(gray, name, 5)
    np.testing.assert_array_equal(gray, before)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES - SEVERITY_INDEPENDENT))
def test_damage_grows_with_severity(name, gray, rgb):
    for images in (gray, rgb):
        damage = [_damage(images, corrupt(images, name, severity)) for severity in range(1, 6)]
        assert np.all(np.diff(damage) >= 0), damage
        assert damage[-1] > damage[0], damage


@pytest.mark.parametrize("name", sorted(SEVERITY_INDEPENDENT))
def test_severity_independent(name, gray):
    outputs = [corrupt(gray, name, severity) for severity in range(1, 6)]
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])


@pytest.mark.parametrize("name", NAMES)
def test_every_corruption_changes_the_image(name, gray, rgb):
    assert _damage(gray, corrupt(gray, name, 5)) > 1
    assert _damage(rgb, corrupt(rgb, name, 5)) > 1


def test_unknown_name(gray):
    with pytest.raises(ValueError, match="unknown corruption 'saturate'") as info:
        corrupt(gray, "saturate", 1)
    message = str(info.value)
    assert "\n" not in message and ", ".join(NAMES) in message


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, "3", True, None])
def test_bad_severity(severity, gray):
    with pytest.raises(ValueError, match="severity must be 1-5"):
        corrupt(gray, "gaussian_noise", severity)


def test_numpy_integer_severity(gray):
    np.testing.assert_array_equal(corrupt(gray, "fog", np.int64(2)), corrupt(gray, "fog", 2))


@pytest.mark.parametrize("images", [np.zeros((2, 28, 28), np.float32), np.zeros((28, 28), np.uint8)])
def test_bad_images(images):
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images, "fog", 1)


def test_rotate_90_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        corrupt(np.zeros((2, 28, 32), np.uint8), "rotate_90", 1)


def test_canny_edges_is_an_edge_map(gray, rgb):
    for images in (gray, rgb):
        edges = corrupt(images, "canny_edges", 5)
        assert set(np.unique(edges)) <= {0, 255}
        assert 0.03 < (edges == 255).mean() < 0.4
    # edges lie where the image changes, not in its flat interior or background
    edges = corrupt(gray, "canny_edges", 5) == 255
    gradient = np.hypot(*np.gradient(gray.astype(np.float64), axis=(1, 2)))
    assert gradient[edges].mean() > 2 * gradient[~edges].mean()


def test_canny_edges_fades_in(gray):
    halfway = corrupt(gray, "canny_edges", 3).astype(np.float64)
    expected = 0.4 * gray + 0.6 * corrupt(gray, "canny_edges", 5)
    assert np.abs(halfway - expected).max() <= 1


def test_flips_and_turns(gray, rgb):
    for images in (gray, rgb):
        np.testing.assert_array_equal(corrupt(images, "flip_lr", 1), images[..., ::-1])
        np.testing.assert_array_equal(corrupt(images, "flip_ud", 1), images[..., ::-1, :])
        for name, period in (("flip_lr", 2), ("flip_ud", 2), ("inverse", 2), ("rotate_90", 4)):
            out = images
            for _ in range(period):
                out = corrupt(out, name, 1)
            np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(corrupt(gray, "inverse", 1), 255 - gray)
    np.testing.assert_array_equal(corrupt(gray, "rotate_90", 1), np.rot90(gray, axes=(1, 2)))


def _shift(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """image moved down by rows and right by cols, black where nothing moved in."""
    padded = np.pad(image, 2)
    return padded[2 - rows:2 - rows + image.shape[0], 2 - cols:2 - cols + image.shape[1]]


def test_translate_shifts_whole_pixels(gray):
    # severity 1 moves by 2 pixels in a random direction, rounded to whole pixels: every value survives, moved
    for clean, out in zip(gray, corrupt(gray, "translate", 1), strict=True):
        assert any(np.array_equal(out, _shift(clean, rows, cols)) for rows in range(-2, 3) for cols in range(-2, 3))


def test_noise_keeps_pixel_statistics_centred(gray):
    for name in ("gaussian_noise", "speckle_noise", "shot_noise"):
        noisy = corrupt(gray, name, 1).astype(np.float64)
        bright = gray > 128  # away from the clipping at 0 and 255
        assert abs((noisy - gray)[bright & (gray < 200)].mean()) < 3, name


def test_corruptions_scale_with_image_size(gray):
    big = np.repeat(np.repeat(gray[:8], 4, axis=1), 4, axis=2)  # 112 x 112, the same pictures
    small_blur = _damage(gray[:8], corrupt(gray[:8], "gaussian_blur", 5))
    big_blur = _damage(big, corrupt(big, "gaussian_blur", 5))
    assert 0.5 < big_blur / small_blur < 2


# --- as a dataset and as a transform ---

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="apt package dataset-fashion-mnist not installed")
def test_fashion_mnist_c_dataset_is_the_test_split_corrupted_deterministically():
    from vitkit.data import build_dataset

    clean = build_dataset("fashion-mnist", "test")
    fog = build_dataset("fashion-mnist-c:fog:3", "test")
    assert len(fog) == len(clean) and torch.equal(fog.targets, clean.targets)
    assert fog.info.name == "fashion-mnist-c:fog:3" and fog.info.num_classes == 10
    assert torch.equal(fog.images, build_dataset("fashion-mnist-c:fog:3", "test").images)
    assert (fog.images.float() - clean.images.float()).abs().mean() > 5
    val = build_dataset("fashion-mnist-c:fog:3", "val")
    assert len(val) == len(build_dataset("fashion-mnist", "val"))


@pytest.mark.parametrize("spec, message", [
    ("fashion-mnist-c:smudge:3", "unknown corruption 'smudge'.*fog"),
    ("fashion-mnist-c:fog:6", "severity must be 1-5"),
    ("fashion-mnist-c:fog", "severity must be 1-5"),
])
def test_fashion_mnist_c_bad_specs_name_the_valid_ones(spec, message):
    from vitkit.data import build_dataset

    with pytest.raises(ValueError, match=message):
        build_dataset(spec, "test")


def test_corrupt_transform_validates_early_and_is_reproducible(gray):
    with pytest.raises(ValueError, match="severity must be 1-5"):
        Corrupt("fog", 0)
    with pytest.raises(ValueError, match="valid names"):
        Corrupt("smudge", 1)
    batches = [torch.from_numpy(gray[:8, None].copy()) for _ in range(2)]
    transform, repeat = Corrupt("gaussian_noise", 3, seed=1), Corrupt("gaussian_noise", 3, seed=1)
    first, again = [transform(b) for b in batches], [repeat(b) for b in batches]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])  # each batch draws its own noise
    assert first[0].dtype == torch.uint8 and first[0].shape == batches[0].shape
