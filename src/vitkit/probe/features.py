"""Frozen features of a backbone for the probes: one forward pass per image gives everything every protocol
reads, so the cache holds one entry per (weights, dataset, split, transform, blocks) and each feature set
(`feature_sets`) is a view of it.

Per image, for the last `blocks` blocks (ViT) or stages (hierarchical families), after the final norm as
DINOv2's linear evaluation takes them:
- `pooled`: the model's own pre-logits feature, `forward_head(forward_features(x), pre_logits=True)`;
- `patch_mean/j`: the mean of the j-th last block's patch tokens (a stage's spatial mean), j = 1..blocks;
- `cls/j`: the j-th last block's class token, for models that have one.
"""

from collections.abc import Callable

import torch
from torch import nn

from ..data.batches import eval_batches

TOKENS = ("pooled", "cls", "patch_mean", "cls+patch_mean")


def has_class_token(model: nn.Module) -> bool:
    """A token model with a class token (timm's attribute name)."""
    return hasattr(model, "forward_tokens") and getattr(model, "cls_token", None) is not None


def num_blocks(model: nn.Module) -> int:
    """Blocks `forward_intermediates` can return: transformer blocks, or a hierarchical model's stages."""
    return len(model.feature_info)


def check_blocks(model: nn.Module, blocks: int, source: str) -> None:
    available = num_blocks(model)
    if not isinstance(blocks, int) or isinstance(blocks, bool) or not 1 <= blocks <= available:
        raise ValueError(f"blocks={blocks!r}: {source} has {available} blocks/stages to take features from; "
                         f"expected a count from 1 to {available}")


@torch.no_grad()
def _forward_batch(model: nn.Module, images: torch.Tensor, blocks: int, cls: bool) -> dict[str, torch.Tensor]:
    """One batch's features (float32, CPU): `pooled`, and `patch_mean/j` (`cls/j`) for the j-th block from the
    end (j = 1 is the last); stages of hierarchical models differ in width, so each block has its own tensor.
    The only place probes run a model: tests count calls here."""
    out = {"pooled": model.forward_head(model.forward_features(images), pre_logits=True)}
    maps = model.forward_intermediates(images, indices=blocks, norm=True, intermediates_only=True,
                                       **({"return_prefix_tokens": True} if cls else {}))
    for i, item in enumerate(maps):
        j = len(maps) - i
        feature_map, prefix = item if cls else (item, None)
        out[f"patch_mean/{j}"] = feature_map.float().mean(dim=(2, 3))
        if cls:
            out[f"cls/{j}"] = prefix[:, 0]
    return {k: v.float().cpu() for k, v in out.items()}


def cached_blocks(features: dict[str, torch.Tensor]) -> int:
    """How many of the last blocks `features` holds (0 for raw pixels)."""
    return sum(1 for k in features if k.startswith("patch_mean/"))


def last_blocks(features: dict[str, torch.Tensor], kind: str, n: int) -> torch.Tensor:
    """`kind` ("cls" or "patch_mean") of the last n blocks, concatenated from the earliest to the last."""
    return torch.cat([features[f"{kind}/{j}"] for j in range(n, 0, -1)], dim=1)


def extract(model: nn.Module, dataset, transform: Callable, blocks: int = 4, batch_size: int = 256,
            on_batch: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """Features of every image of `dataset` in order, and its labels: {"pooled", "patch_mean/j", ["cls/j"],
    "labels"}. The last norm of hierarchical models applies to the last stage only (as their forward)."""
    model.eval()
    device = next(model.parameters()).device
    cls = has_class_token(model)
    parts: dict[str, list[torch.Tensor]] = {}
    for images, labels in eval_batches(dataset, transform, batch_size):
        for key, value in _forward_batch(model, images.to(device), blocks, cls).items():
            parts.setdefault(key, []).append(value)
        parts.setdefault("labels", []).append(labels.to(torch.int64))
        if on_batch is not None:
            on_batch(len(labels))
    if not parts:
        raise ValueError(f"{getattr(dataset, 'info', None) and dataset.info.name or 'the dataset'} has no images")
    return {k: torch.cat(v) for k, v in parts.items()}


def pixel_features(dataset, mean, std) -> dict[str, torch.Tensor]:
    """Raw pixels as features (the baseline every backbone must beat): normalised and flattened."""
    from ..data.augment import normalize, to_unit_float

    chunks = []
    for images, _ in eval_batches(dataset, lambda x: normalize(to_unit_float(x), mean, std), 4096):
        chunks.append(images.flatten(1))
    pooled = torch.cat(chunks)
    return {"pooled": pooled, "labels": torch.as_tensor(dataset.targets, dtype=torch.int64).clone()}


def feature_sets(features: dict[str, torch.Tensor], blocks: tuple[int, ...] = (1, 4)) -> dict[str, torch.Tensor]:
    """The named feature matrices a linear probe compares, DINOv2's grid: the class token of the last n
    blocks, concatenated, with or without the last block's patch-token mean (`last4_cls+patch_mean`);
    models without a class token use patch means (`last4_patch_mean`); raw pixels only `pooled`."""
    available = cached_blocks(features)
    if not available:
        return {"pooled": features["pooled"]}
    sets = {}
    for n in sorted({min(b, available) for b in blocks}):
        if "cls/1" in features:
            cls = last_blocks(features, "cls", n)
            sets[f"last{n}_cls"] = cls
            sets[f"last{n}_cls+patch_mean"] = torch.cat([cls, features["patch_mean/1"]], 1)
        else:
            sets[f"last{n}_patch_mean"] = last_blocks(features, "patch_mean", n)
    return sets


def select(features: dict[str, torch.Tensor], tokens: str = "pooled", blocks: int = 1) -> torch.Tensor:
    """One feature matrix (N, D) for kNN and few-shot: `pooled`, or the `cls` / `patch_mean` /
    `cls+patch_mean` of the last `blocks` blocks (concatenated)."""
    if tokens not in TOKENS:
        raise ValueError(f"unknown feature choice {tokens!r}; expected one of {', '.join(TOKENS)}")
    if tokens == "pooled":
        return features["pooled"]
    available = cached_blocks(features)
    if not available:
        raise ValueError(f"raw pixels have no tokens: use tokens='pooled', not {tokens!r}")
    if "cls" in tokens and "cls/1" not in features:
        raise ValueError(f"this model has no class token: use tokens='patch_mean' or 'pooled', not {tokens!r}")
    if not 1 <= blocks <= available:
        raise ValueError(f"blocks={blocks}: the cached features hold the last {available} blocks")
    if tokens == "cls+patch_mean":
        return torch.cat([last_blocks(features, "cls", blocks), features["patch_mean/1"]], 1)
    return last_blocks(features, tokens, blocks)
