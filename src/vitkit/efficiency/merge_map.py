"""Which patches ended up in which token: a picture of ToMe's merges (and EViT's fused token).

Each remaining token's patches are painted with their mean colour and outlined, so a region that
merged into one token reads as one flat patch of colour.
"""

import numpy as np
import torch
from PIL import Image
from torch import nn

from .adapters import find_token_adapter
from .finite_rows import unwrap


def token_groups(model: nn.Module, image: torch.Tensor) -> np.ndarray:
    """(rows, cols) int array over the patch grid: for each patch, the index of the final token that holds it."""
    net = unwrap(model)
    adapter = find_token_adapter(net)
    state = adapter.state(net) if adapter is not None else None
    if state is None:
        raise ValueError("merge maps need a model optimized with tome (or evit)")
    tracing, state.trace_source = state.trace_source, True
    try:
        with torch.no_grad():
            net.forward_features(image[None])
        source = state.source
    finally:
        state.trace_source = tracing
    rows, cols = adapter.patch_grid(net)
    prefix = adapter.num_prefix_tokens(net)
    if source is None:  # nothing was merged
        return np.arange(rows * cols).reshape(rows, cols)
    patches = source[0, prefix:, prefix:].float()  # (remaining patch tokens, original patches)
    return patches.argmax(dim=0).reshape(rows, cols).cpu().numpy()


def render_merge_map(image: np.ndarray, groups: np.ndarray, scale: int = 8) -> np.ndarray:
    """`image` (H, W, 3) uint8 -> (H*scale, W*scale, 3) with each group flat-coloured and outlined."""
    h, w = image.shape[:2]
    grid_h, grid_w = groups.shape
    rows = np.minimum(np.arange(h) * grid_h // h, grid_h - 1)
    cols = np.minimum(np.arange(w) * grid_w // w, grid_w - 1)
    pixel_group = groups[rows[:, None], cols[None, :]]
    out = image.astype(np.float32).copy()
    for g in np.unique(pixel_group):
        mask = pixel_group == g
        out[mask] = image[mask].reshape(-1, 3).mean(axis=0)
    out = np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)
    big = np.repeat(np.repeat(pixel_group, scale, axis=0), scale, axis=1)
    edge = np.zeros_like(big, dtype=bool)
    edge[1:, :] |= big[1:, :] != big[:-1, :]
    edge[:, 1:] |= big[:, 1:] != big[:, :-1]
    out[edge] = (255, 255, 255)
    return out.clip(0, 255).astype(np.uint8)


def save_merge_map(model: nn.Module, image: torch.Tensor, display: np.ndarray, path) -> None:
    """`image`: the normalised model input (C, H, W); `display`: the same image as uint8 (H, W) or (H, W, 3)."""
    if display.ndim == 2:
        display = np.repeat(display[..., None], 3, axis=2)
    elif display.shape[-1] == 1:
        display = np.repeat(display, 3, axis=2)
    scale = max(1, 224 // max(display.shape[:2]))
    picture = render_merge_map(display, token_groups(model, image), scale)
    Image.fromarray(picture).save(path)
