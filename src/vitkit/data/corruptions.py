"""Fashion-MNIST-C, made offline: image corruptions at five severities, as pure functions on uint8 images.

Reproduces the corruption families of MNIST-C (Mu & Gilmer, 2019) and of Fashion-MNIST-C (Weiss & Tonella,
2022), which adds flips and turns, computed from local images with no downloads:

- noise: gaussian_noise, shot_noise, impulse_noise, speckle_noise
- blur: gaussian_blur, glass_blur, motion_blur, defocus_blur
- geometry: shear, scale, rotate, translate
- photometric: brightness, contrast, inverse
- severity-independent orientation changes: flip_lr, flip_ud, rotate_90 (Fashion-MNIST-C's "turns")
- occlusion and rendering: stripe, fog, spatter, dotted_line, zigzag, canny_edges, pixelate, jpeg_compression

Every corruption maps uint8 images (N, H, W) or (N, C, H, W) to uint8 images of the same shape, is vectorised
over N (canny_edges and jpeg_compression loop over images) and draws its randomness from the generator it is
given; `corrupt` derives that generator from (seed, name, severity), so its output is deterministic and no two
corruptions or severities share noise.

Severity. The per-severity parameters are in `SEVERITY_PARAMS`, one tuple of five per corruption; damage (mean
absolute change from the clean image) grows with severity. inverse, flip_lr, flip_ud and rotate_90 ignore
severity (`SEVERITY_INDEPENDENT`): a flip is a flip, and Fashion-MNIST-C applies them without severity too.
Lengths in the table (blur sizes, shifts, stripe widths, ...) are pixels of a 28 x 28 image and scale with
the image width, so a 32 x 32 or 224 x 224 image gets the same relative damage. Intensities are on a [0, 1]
scale. The values were chosen for this module (not taken from either paper), so that severity 1 is subtle and
severity 5 is hard but mostly still recognisable on 28 x 28 Fashion-MNIST and digits.

Differences from the papers:

- MNIST-C has one severity per corruption and Fashion-MNIST-C draws a random severity per image; here the five
  severities are explicit, as in ImageNet-C / CIFAR-10-C, and a dataset that mixes them is one call per level.
- saturate is left out: it changes colour saturation, which a gray image does not have, so on Fashion-MNIST it
  is either the identity or, through a gray -> RGB -> HSV round trip, a disguised brightness change.
- glass_blur moves each pixel to a random neighbour's value (a gather) rather than swapping pixel pairs one
  at a time, which is what makes it vectorisable; the look (blur, local scramble, blur) is the same.
- motion_blur uses a centred, anti-aliased line kernel at a random angle per image (MNIST-C: Wand's one-sided
  motion blur); defocus_blur an anti-aliased disk.
- shear, scale and rotate go one way for a random half of the images and the other way for the rest
  (translate: a random direction per image), with the magnitude fixed by severity; pixels from outside the
  image are black, like MNIST's background.
- brightness adds to every channel (MNIST-C adds to the HSV value channel, which is the same for gray images).
- fog is fractal value noise (octaves of bilinearly upsampled random grids) rather than diamond-square plasma.
- spatter paints blobs (thresholded smooth noise) of a random gray shade; dotted_line and zigzag paint white
  1-pixel lines across the image, more of them at higher severity.
- canny_edges fades the image into its Canny edge map (scikit-image); severity 5 is the pure edge map of
  MNIST-C. Colour images are edge-detected on their luminance.
- stripe inverts a random vertical band whose width grows with severity.
"""

import functools
import io
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage, signal, special

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

REFERENCE_SIZE = 28  # lengths in SEVERITY_PARAMS are pixels of an image this wide

SEVERITY_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.06, 0.10, 0.15, 0.22, 0.32),  # std of added noise
    "shot_noise": (60, 30, 15, 8, 4),  # photons per pixel at full white (fewer: noisier)
    "impulse_noise": (0.02, 0.05, 0.09, 0.15, 0.24),  # fraction of values set to black or white
    "speckle_noise": (0.15, 0.25, 0.35, 0.50, 0.70),  # std of multiplicative noise
    "gaussian_blur": (0.5, 0.75, 1.0, 1.3, 1.6),  # sigma, px
    "glass_blur": ((0.4, 1, 1), (0.5, 1, 2), (0.6, 1, 3), (0.7, 2, 2), (0.8, 2, 3)),  # (sigma px, shift px, rounds)
    "motion_blur": (2.0, 3.5, 5.0, 6.5, 8.0),  # streak length, px
    "defocus_blur": (0.8, 1.2, 1.6, 2.0, 2.5),  # disk radius, px
    "shear": (0.15, 0.30, 0.45, 0.60, 0.80),  # horizontal shear factor, random sign
    "scale": (0.15, 0.30, 0.45, 0.60, 0.80),  # zoom by a factor 1 + a, in or out at random
    "rotate": (10, 20, 30, 45, 60),  # degrees, random sign
    "translate": (2, 4, 6, 8, 10),  # shift, px, random direction
    "brightness": (0.10, 0.20, 0.30, 0.40, 0.50),  # added to every value
    "contrast": (0.60, 0.45, 0.30, 0.20, 0.10),  # contrast kept (1: unchanged)
    "stripe": (2, 4, 6, 8, 10),  # width of the inverted band, px
    "fog": ((0.2, 0.6), (0.3, 0.6), (0.45, 0.55), (0.6, 0.5), (0.8, 0.5)),  # (fog strength, octave decay)
    "spatter": (0.03, 0.06, 0.10, 0.15, 0.21),  # expected fraction of the image covered
    "dotted_line": (1, 2, 3, 4, 5),  # number of lines
    "zigzag": (1, 2, 3, 4, 5),  # number of zigzags
    "canny_edges": (0.2, 0.4, 0.6, 0.8, 1.0),  # weight of the edge map (1: edges only)
    "pixelate": (0.80, 0.65, 0.50, 0.40, 0.30),  # fraction of the resolution kept
    "jpeg_compression": (50, 30, 18, 11, 6),  # JPEG quality
}
SEVERITY_INDEPENDENT = frozenset({"inverse", "flip_lr", "flip_ud", "rotate_90"})

SPATTER_BLOB_SIGMA = 1.5  # px: smoothness (size) of spatter blobs
SPATTER_SHADES = (0.4, 1.0)  # range of a spatter blob's gray value
DOT_LENGTH = 1.5  # px: length of a dot and of a gap in dotted_line
ZIGZAG_AMPLITUDE = 2.0  # px: distance of a zigzag's corners from its centre line
ZIGZAG_STEP = 3.0  # px: distance between a zigzag's corners along its centre line
CANNY_SIGMA = 1.0  # px: smoothing before edge detection
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, for edge detection on colour images

CORRUPTIONS: dict[str, Corruption] = {}


def list_corruptions() -> list[str]:
    return sorted(CORRUPTIONS)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupts uint8 images (N, H, W) or (N, C, H, W) with `name` at `severity` (1-5).

    The output depends only on (images, name, severity, seed): the generator is seeded with (seed, CRC-32 of
    name, severity), so corruptions and severities never share noise. Raises ValueError for an unknown name, a
    severity that is not an integer 1-5, or images that are not uint8 (N, H, W) / (N, C, H, W).
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(list_corruptions())}")
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1-5, got {severity!r}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"images must be uint8 (N, H, W) or (N, C, H, W), got {images.dtype} {images.shape}")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), int(severity)])
    return CORRUPTIONS[name](images, int(severity), rng)


class Corrupt:
    """A corruption as a transform for any dataset's uint8 batches: a (N, C, H, W) tensor in, the same out
    (before the model's eval transform), e.g. `eval_batches(dataset, lambda x: tf(Corrupt("fog", 3)(x)))`.
    Batch i is corrupted with seed `seed + i`, so a pass over a dataset in fixed batches is reproducible."""

    def __init__(self, name: str, severity: int, seed: int = 0):
        corrupt(np.zeros((1, 8, 8), np.uint8), name, severity)  # validates name and severity now
        self.name, self.severity, self.seed, self.calls = name, severity, seed, 0

    def __call__(self, images):
        import torch

        out = corrupt(images.numpy(), self.name, self.severity, self.seed + self.calls)
        self.calls += 1
        return torch.from_numpy(out)


def _corruption(func: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]) -> Corruption:
    """Registers `func`, which maps float images (N, C, H, W) in [0, 1] to the same, as a uint8 corruption."""

    @functools.wraps(func)
    def on_uint8(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        x = images.astype(np.float32) / 255
        out = func(x[:, None] if images.ndim == 3 else x, severity, rng)
        return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8).reshape(images.shape)

    CORRUPTIONS[func.__name__] = on_uint8
    return on_uint8


def _px(length: float, x: np.ndarray) -> float:
    """A length given in pixels of a REFERENCE_SIZE-wide image, in pixels of the images x."""
    return length * x.shape[-1] / REFERENCE_SIZE


def _random_signs(n: int, rng: np.random.Generator) -> np.ndarray:
    """+1 for half of n images and -1 for the other half, in random order: no net direction in a dataset."""
    return np.where(rng.permutation(n) % 2 == 0, 1.0, -1.0)


# ---------------------------------------------------------------------------------------------------- noise


@_corruption
def gaussian_noise(x, severity, rng):
    std = SEVERITY_PARAMS["gaussian_noise"][severity - 1]
    return x + std * rng.standard_normal(x.shape, dtype=np.float32)


@_corruption
def shot_noise(x, severity, rng):
    photons = SEVERITY_PARAMS["shot_noise"][severity - 1]
    return rng.poisson(x * photons).astype(np.float32) / photons


@_corruption
def impulse_noise(x, severity, rng):
    fraction = SEVERITY_PARAMS["impulse_noise"][severity - 1]
    hit = rng.random(x.shape, dtype=np.float32) < fraction
    salt = rng.random(x.shape, dtype=np.float32) < 0.5
    return np.where(hit, salt.astype(np.float32), x)


@_corruption
def speckle_noise(x, severity, rng):
    std = SEVERITY_PARAMS["speckle_noise"][severity - 1]
    return x * (1 + std * rng.standard_normal(x.shape, dtype=np.float32))


# ----------------------------------------------------------------------------------------------------- blur


def _gaussian_filter(x: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="nearest")


def _convolve(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Convolves each image with its kernel, kernels (N or 1, K, K) with K odd; edges extended."""
    pad = kernels.shape[-1] // 2
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
    return signal.fftconvolve(padded, kernels[:, None], mode="valid", axes=(-2, -1)).astype(np.float32)


def _kernel_grid(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets from the centre of an odd square kernel that holds `radius`."""
    half = int(np.ceil(radius)) + 1
    offsets = np.arange(-half, half + 1, dtype=np.float32)
    return np.meshgrid(offsets, offsets, indexing="ij")


def _line_kernels(length: float, angles: np.ndarray) -> np.ndarray:
    """Anti-aliased centred line segments of `length` at `angles` (radians), one normalised kernel per angle."""
    rows, cols = _kernel_grid(length / 2)
    direction_r, direction_c = np.sin(angles)[:, None, None], np.cos(angles)[:, None, None]
    along = np.clip(rows * direction_r + cols * direction_c, -length / 2, length / 2)
    distance = np.hypot(rows - along * direction_r, cols - along * direction_c)
    weights = np.clip(1 - distance, 0, 1)
    return weights / weights.sum(axis=(1, 2), keepdims=True)


def _disk_kernel(radius: float) -> np.ndarray:
    rows, cols = _kernel_grid(radius)
    weights = np.clip(radius + 0.5 - np.hypot(rows, cols), 0, 1)
    return (weights / weights.sum())[None]


def _scramble(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Replaces every pixel by one at most max_shift rows and columns away (the same one in every channel)."""
    n, c, h, w = x.shape
    rows = np.clip(np.arange(h)[:, None] + rng.integers(-max_shift, max_shift + 1, (n, 1, h, w)), 0, h - 1)
    cols = np.clip(np.arange(w) + rng.integers(-max_shift, max_shift + 1, (n, 1, h, w)), 0, w - 1)
    source = np.broadcast_to((rows * w + cols).reshape(n, 1, h * w), (n, c, h * w))
    return np.take_along_axis(x.reshape(n, c, h * w), source, axis=2).reshape(x.shape)


@_corruption
def gaussian_blur(x, severity, rng):
    return _gaussian_filter(x, _px(SEVERITY_PARAMS["gaussian_blur"][severity - 1], x))


@_corruption
def glass_blur(x, severity, rng):
    sigma, shift, rounds = SEVERITY_PARAMS["glass_blur"][severity - 1]
    x = _gaussian_filter(x, _px(sigma, x))
    for _ in range(rounds):
        x = _scramble(x, max(1, round(_px(shift, x))), rng)
    return _gaussian_filter(x, _px(sigma, x))


@_corruption
def motion_blur(x, severity, rng):
    length = _px(SEVERITY_PARAMS["motion_blur"][severity - 1], x)
    return _convolve(x, _line_kernels(length, rng.uniform(0, np.pi, len(x))))


@_corruption
def defocus_blur(x, severity, rng):
    return _convolve(x, _disk_kernel(_px(SEVERITY_PARAMS["defocus_blur"][severity - 1], x)))


# ------------------------------------------------------------------------------------------------- geometry


def _affine(x: np.ndarray, matrices: np.ndarray, shifts: np.ndarray | None = None) -> np.ndarray:
    """Resamples image n at matrices[n] @ p + shifts[n] for each output pixel p (both relative to the centre),
    bilinearly; what comes from outside the image is black."""
    n, c, h, w = x.shape
    rows, cols = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    source = np.einsum("nij,jhw->inhw", matrices, np.stack([rows, cols]))
    source += np.array([(h - 1) / 2, (w - 1) / 2])[:, None, None, None]
    if shifts is not None:
        source += shifts.T[:, :, None, None]
    index = np.broadcast_to(np.arange(n, dtype=np.float64)[:, None, None], (n, h, w))
    out = np.empty_like(x)
    for channel in range(c):
        out[:, channel] = ndimage.map_coordinates(x[:, channel], [index, *source], order=1, mode="constant")
    return out


@_corruption
def shear(x, severity, rng):
    matrices = np.tile(np.eye(2), (len(x), 1, 1))
    matrices[:, 1, 0] = SEVERITY_PARAMS["shear"][severity - 1] * _random_signs(len(x), rng)
    return _affine(x, matrices)


@_corruption
def scale(x, severity, rng):
    zoom = (1 + SEVERITY_PARAMS["scale"][severity - 1]) ** _random_signs(len(x), rng)
    return _affine(x, np.eye(2) / zoom[:, None, None])


@_corruption
def rotate(x, severity, rng):
    angles = np.deg2rad(SEVERITY_PARAMS["rotate"][severity - 1]) * _random_signs(len(x), rng)
    cos, sin = np.cos(angles), np.sin(angles)
    return _affine(x, np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1))


@_corruption
def translate(x, severity, rng):
    distance = _px(SEVERITY_PARAMS["translate"][severity - 1], x)
    directions = rng.uniform(0, 2 * np.pi, len(x))
    shifts = np.rint(distance * np.stack([np.sin(directions), np.cos(directions)], 1))  # whole pixels: no blur
    return _affine(x, np.tile(np.eye(2), (len(x), 1, 1)), shifts)


@_corruption
def flip_lr(x, severity, rng):
    return x[..., ::-1]


@_corruption
def flip_ud(x, severity, rng):
    return x[..., ::-1, :]


@_corruption
def rotate_90(x, severity, rng):
    """A quarter turn counter-clockwise."""
    if x.shape[-2] != x.shape[-1]:
        raise ValueError(f"rotate_90 needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    return np.rot90(x, k=1, axes=(-2, -1))


# ---------------------------------------------------------------------------------------------- photometric


@_corruption
def brightness(x, severity, rng):
    return x + SEVERITY_PARAMS["brightness"][severity - 1]


@_corruption
def contrast(x, severity, rng):
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * SEVERITY_PARAMS["contrast"][severity - 1] + mean


@_corruption
def inverse(x, severity, rng):
    return 1 - x


# ----------------------------------------------------------------------------------- occlusion and rendering


def _upsample_bilinear(grids: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N, g, g) -> (N, h, w), the grid's corners on the image's corners."""

    def along(values, axis, size):
        position = np.linspace(0, values.shape[axis] - 1, size)
        low = np.minimum(position.astype(int), values.shape[axis] - 2)
        frac = (position - low).astype(np.float32)
        shape = [1] * values.ndim
        shape[axis] = size
        frac = frac.reshape(shape)
        return np.take(values, low, axis) * (1 - frac) + np.take(values, low + 1, axis) * frac

    return along(along(grids, 1, h), 2, w)


def _fractal_noise(n: int, h: int, w: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Value noise (N, h, w) in [0, 1]: random grids of 2, 4, 8, ... cells upsampled, each octave `decay` weaker."""
    total = np.zeros((n, h, w), np.float32)
    cells, weight = 2, 1.0
    while cells < max(h, w):
        total += weight * _upsample_bilinear(rng.random((n, cells + 1, cells + 1), dtype=np.float32), h, w)
        cells, weight = cells * 2, weight * decay
    low, high = total.min(axis=(1, 2), keepdims=True), total.max(axis=(1, 2), keepdims=True)
    return (total - low) / np.maximum(high - low, 1e-6)


def _draw_lines(x: np.ndarray, vertices: np.ndarray, dash: float | None = None) -> np.ndarray:
    """Paints white 1-pixel polylines: vertices (N, lines, corners, 2) as (row, col); dash: dot and gap length."""
    n, c, h, w = x.shape
    starts, ends = vertices[:, :, :-1], vertices[:, :, 1:]
    lengths = np.linalg.norm(ends - starts, axis=-1)  # (N, lines, segments)
    along = np.linspace(0, 1, int(np.ceil(lengths.max())) + 1)  # at most 1 px apart: no holes in a line
    points = starts[..., None, :] + along[:, None] * (ends - starts)[..., None, :]  # (N, lines, segments, t, 2)
    rows, cols = np.rint(points[..., 0]).astype(int), np.rint(points[..., 1]).astype(int)
    keep = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    if dash is not None:
        keep &= (lengths[..., None] * along // dash) % 2 == 0
    image = np.broadcast_to(np.arange(n)[:, None, None, None], keep.shape)
    painted = np.zeros((n, h * w), bool)
    painted[image[keep], rows[keep] * w + cols[keep]] = True
    return np.where(painted.reshape(n, 1, h, w), np.float32(1), x)


def _random_lines(x: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Centres (N, count, 2) in the middle half of the image, unit directions (N, count, 2), and a length that
    takes a line through a centre past both edges."""
    n, _, h, w = x.shape
    centres = rng.uniform(0.25, 0.75, (n, count, 2)) * np.array([h - 1, w - 1])
    angles = rng.uniform(0, np.pi, (n, count))
    return centres, np.stack([np.sin(angles), np.cos(angles)], -1), float(np.hypot(h, w))


@_corruption
def stripe(x, severity, rng):
    n, _, _, w = x.shape
    width = max(1, round(_px(SEVERITY_PARAMS["stripe"][severity - 1], x)))
    start = rng.integers(0, w - width + 1, (n, 1, 1, 1))
    columns = np.arange(w)
    return np.where((columns >= start) & (columns < start + width), 1 - x, x)


@_corruption
def fog(x, severity, rng):
    strength, decay = SEVERITY_PARAMS["fog"][severity - 1]
    n, _, h, w = x.shape
    return (x + strength * _fractal_noise(n, h, w, decay, rng)[:, None]) / (1 + strength)


@_corruption
def spatter(x, severity, rng):
    n, _, h, w = x.shape
    field = ndimage.gaussian_filter(rng.standard_normal((n, h, w)), (0, *[_px(SPATTER_BLOB_SIGMA, x)] * 2))
    field /= field.std(axis=(1, 2), keepdims=True)
    blobs = field > special.ndtri(1 - SEVERITY_PARAMS["spatter"][severity - 1])
    shades = rng.uniform(*SPATTER_SHADES, (n, 1, 1, 1)).astype(np.float32)
    return np.where(blobs[:, None], shades, x)


@_corruption
def dotted_line(x, severity, rng):
    centres, directions, length = _random_lines(x, SEVERITY_PARAMS["dotted_line"][severity - 1], rng)
    ends = np.stack([centres - directions * length / 2, centres + directions * length / 2], axis=2)
    return _draw_lines(x, ends, dash=_px(DOT_LENGTH, x))


@_corruption
def zigzag(x, severity, rng):
    centres, directions, length = _random_lines(x, SEVERITY_PARAMS["zigzag"][severity - 1], rng)
    step, amplitude = _px(ZIGZAG_STEP, x), _px(ZIGZAG_AMPLITUDE, x)
    along = np.arange(-length / 2, length / 2 + step, step)
    across = amplitude * (-1.0) ** np.arange(len(along))
    normals = np.stack([directions[..., 1], -directions[..., 0]], -1)
    corners = centres[:, :, None] + along[:, None] * directions[:, :, None] + across[:, None] * normals[:, :, None]
    return _draw_lines(x, corners)


@_corruption
def canny_edges(x, severity, rng):
    from skimage.feature import canny  # scikit-image takes a while to import: only pay it here

    gray = x[:, 0] if x.shape[1] == 1 else np.einsum("nchw,c->nhw", x, np.array(LUMINANCE, np.float32))
    sigma = _px(CANNY_SIGMA, x)
    edges = np.stack([canny(image, sigma=sigma) for image in gray]).astype(np.float32)[:, None]
    weight = SEVERITY_PARAMS["canny_edges"][severity - 1]
    return (1 - weight) * x + weight * edges


def _box_downsample(size: int, new_size: int) -> np.ndarray:
    """(new_size, size) matrix that averages the pixels under each output pixel (partial pixels pro rata)."""
    ratio = size / new_size
    starts = np.arange(new_size)[:, None] * ratio
    pixels = np.arange(size)[None]
    overlap = np.clip(np.minimum(pixels + 1, starts + ratio) - np.maximum(pixels, starts), 0, None)
    return (overlap / ratio).astype(np.float32)


def _nearest_upsample(new_size: int, size: int) -> np.ndarray:
    """(size, new_size) matrix that copies the nearest of new_size pixels to each of size pixels."""
    nearest = ((np.arange(size) + 0.5) * new_size / size).astype(int)
    return (nearest[:, None] == np.arange(new_size)[None]).astype(np.float32)


@_corruption
def pixelate(x, severity, rng):
    keep = SEVERITY_PARAMS["pixelate"][severity - 1]
    h, w = x.shape[-2:]
    small_h, small_w = max(1, round(h * keep)), max(1, round(w * keep))
    rows = _nearest_upsample(small_h, h) @ _box_downsample(h, small_h)
    cols = _nearest_upsample(small_w, w) @ _box_downsample(w, small_w)
    return rows @ x @ cols.T


@_corruption
def jpeg_compression(x, severity, rng):
    quality = SEVERITY_PARAMS["jpeg_compression"][severity - 1]
    images = np.rint(x * 255).astype(np.uint8)
    gray = images.shape[1] == 1
    out = np.empty_like(images)
    for i, image in enumerate(images[:, 0] if gray else images.transpose(0, 2, 3, 1)):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer))
        out[i] = decoded[None] if gray else decoded.transpose(2, 0, 1)
    return out.astype(np.float32) / 255
