"""The top-level functions that compose packages: `vitkit.load` is the weights package's `load` plus the
optimize spec a `vitkit optimize` directory records (efficiency sits above weights, so weights cannot
apply it itself)."""

import os

from torch import nn

from .efficiency.optimize import load_optimized


def load(directory: str | os.PathLike, strict: bool = True, optimized: bool = True, **overrides) -> nn.Module:
    """Rebuild a model saved by `vitkit.save` or `vitkit optimize`, or a Hugging Face `save_pretrained`
    directory; `overrides` change the config (img_size=384 resamples the position embedding).

    A `vitkit optimize` directory holds the float weights and the spec; the spec is applied unless
    `optimized=False`."""
    return load_optimized(directory, strict=strict, optimized=optimized, **overrides)
