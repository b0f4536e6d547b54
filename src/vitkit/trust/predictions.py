"""Predictions collected once: for a model and a set of images, the logits, labels, pooled features (the
model's pre-logits) and ids (each image's index in its set). Every trust tool reads these: calibration and
conformal prediction the logits, OOD detection the logits and features, the corruption sweep all of them.

Each set is one forward pass, written atomically to the report's `predictions/` folder (a safetensors file
per set, keyed by the weights' hash, the images' hash and the eval transform, as the probe feature cache is),
so a second `vitkit trust` run on the same model reads them instead of running the model again.
"""

from collections.abc import Callable

import torch
from torch import nn

from ..data.batches import eval_batches
from ..data.transforms import eval_transform
from ..probe.cache import FeatureCache, dataset_hash, weights_hash

FEATURES = "pooled"  # the cache's name for the pooled features


def match_channels(images: torch.Tensor, in_chans: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) with `in_chans` channels: gray repeated to RGB, RGB averaged to gray."""
    if images.shape[1] == in_chans:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, in_chans, -1, -1)
    if in_chans == 1:
        return images.float().mean(1, keepdim=True).round().to(torch.uint8)
    raise ValueError(f"cannot feed {images.shape[1]}-channel images to a model that takes {in_chans} channels")


@torch.no_grad()
def collect(model: nn.Module, dataset, transform: dict, batch_size: int = 256,
            on_batch: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """{"logits", "labels", "pooled", "ids"} of every image of `dataset`, in order. `transform`: the eval
    transform's parameters (size, crop_pct, mean, std); images of another channel count are matched."""
    model.eval()
    device = next(model.parameters()).device
    in_chans = model.input_spec.in_chans

    def prepare(images: torch.Tensor) -> torch.Tensor:
        images = match_channels(images, in_chans)
        return eval_transform(images, transform["size"], transform["crop_pct"], transform["mean"], transform["std"])

    parts: dict[str, list[torch.Tensor]] = {"logits": [], "labels": [], FEATURES: []}
    for images, labels in eval_batches(dataset, prepare, batch_size):
        features = model.forward_features(images.to(device))
        parts[FEATURES].append(model.forward_head(features, pre_logits=True).float().cpu())
        parts["logits"].append(model.forward_head(features).float().cpu())
        parts["labels"].append(labels.to(torch.int64))
        if on_batch is not None:
            on_batch(len(labels))
    if not parts["labels"]:
        raise ValueError("no images to predict: the set is empty")
    out = {k: torch.cat(v) for k, v in parts.items()}
    out["ids"] = torch.arange(len(out["labels"]))
    return out


class Predictions:
    """Predictions of one model, per named set of images: from `folder` when an earlier run saved them,
    else one forward pass (then saved)."""

    def __init__(self, model: nn.Module, transform: dict, folder, batch_size: int = 256, log=print,
                 progress: Callable[[str, int], Callable[[int], None]] | None = None):
        """`progress(name, batches)` gives the callback each batch reports its image count to."""
        self.model, self.transform, self.batch_size, self.log = model, transform, batch_size, log
        self.cache = FeatureCache(folder, log)
        self.weights = weights_hash(model)
        self.progress = progress
        self.computed: list[str] = []  # the sets that needed a forward pass in this run
        self._memory: dict[str, dict[str, torch.Tensor]] = {}

    def of(self, name: str, dataset, show_progress: bool = True) -> dict[str, torch.Tensor]:
        if name in self._memory:
            return self._memory[name]
        key = {"kind": "predictions", "weights": self.weights, "set": name, "data_hash": dataset_hash(dataset),
               "num_images": len(dataset), "transform": self.transform}
        out = self.cache.load(key, len(dataset))
        if out is None:
            batches = -(-len(dataset) // self.batch_size)
            on_batch = self.progress(name, batches) if self.progress and show_progress else None
            out = collect(self.model, dataset, self.transform, self.batch_size, on_batch)
            self.cache.save(key, out)
            self.computed.append(name)
        self._memory[name] = out
        return out
