"""The one place image files are decoded: bombs refused, high bit depths scaled to 8 bits, errors naming the file."""

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_REASON_CHARS = 200


class UnreadableImageError(OSError):
    """An image file that cannot be decoded; its message is one line naming the file and what was wrong."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = Path(path), reason

    def __reduce__(self):  # DataLoader workers pickle exceptions; the default would call __init__(message)
        return type(self), (self.path, self.reason)


def decode_image(path: str | Path, mode: str, *, draft: bool = False) -> Image.Image:
    """Fully decode `path` and convert it to `mode` ("L" or "RGB"); raise UnreadableImageError if that fails.

    More than PIL.Image.MAX_IMAGE_PIXELS pixels is refused as a possible decompression bomb (Pillow itself only
    warns below twice that). 16-bit and floating-point greyscale is scaled to 8 bits rather than clipped. With
    `draft`, a JPEG is decoded at reduced scale: every byte of it is still read, so that is enough to check a file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if draft:
                    img.draft(None, (1, 1))
                img.load()
                return to_8bit(img).convert(mode)  # a new image, still valid once the file is closed
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnreadableImageError(path, f"refused as a possible decompression bomb: {err} Raise "
                                         "PIL.Image.MAX_IMAGE_PIXELS if the file is trusted") from err
    except UnidentifiedImageError as err:
        raise UnreadableImageError(path, "not an image format Pillow recognises") from err
    except Exception as err:  # broken files raise anything from OSError to SyntaxError and struct.error
        raise UnreadableImageError(path, describe(err)) from err


def describe(err: BaseException) -> str:
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err) or type(err).__name__
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."


def to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit ("I;16*", and "I" up to 65535), 32-bit ("I") and float ("F") greyscale to an "L" image.

    Pillow's own convert("L") clips these, so a 16-bit scan comes out almost all white. Floats within [0, 1]
    are taken as fractions of white, other floats as 0-255 values.
    """
    if not (img.mode.startswith("I;16") or img.mode in ("I", "F")):
        return img
    values = np.asarray(img)
    if img.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0)
        if values.size and values.min() >= 0 and values.max() <= 1:
            values = values * 255
    else:
        values = np.clip(values.astype(np.int64), 0, None)
        peak = int(values.max()) if values.size else 0
        values = values * (255 / peak) if peak > 65535 else values / 257
    return Image.fromarray(np.rint(np.clip(values, 0, 255)).astype(np.uint8))
