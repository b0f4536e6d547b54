"""What `vitkit probe` compares: each argument names a backbone and how its images are prepared.

- a directory: a model vitkit saved (a training or pretraining run's best/ or final/, `vitkit optimize`
  output) or a Hugging Face directory of a converted model type, with its own eval transform;
- `random:DIR` or `random:NAME`: the same architecture with fresh, seeded weights (the floor);
  a registered model NAME alone is random init too (vitkit downloads no weights);
- `pixels`: the raw pixels, normalised with the dataset's statistics (the baseline).
"""

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

PIXELS = "pixels"


@dataclass
class Backbone:
    label: str  # as given on the command line
    kind: str  # "trained" (weights from a directory), "random init" or "raw pixels"
    model: nn.Module | None
    transform: dict = field(default_factory=dict)  # eval transform parameters (size, crop_pct, mean, std)
    optimize: str = "none"


def _fresh(model: nn.Module, seed: int) -> nn.Module:
    """`model`'s architecture (its config) with newly initialised weights (its family's init), seeded."""
    torch.manual_seed(seed)
    return type(model)(copy.deepcopy(model.config))


def resolve(spec: str, info, seed: int = 0) -> Backbone:
    """The backbone `spec` names, for a dataset described by `info` (channels, statistics)."""
    from ..data.transforms import saved_model_eval_params
    from ..efficiency.optimize import load_optimized
    from ..models import create_model, list_models

    dataset_transform = {"size": info.img_size, "crop_pct": 1.0, "mean": list(info.mean), "std": list(info.std)}
    if spec == PIXELS:
        return Backbone(spec, "raw pixels", None, dataset_transform)
    random_init, target = spec.startswith("random:"), spec.removeprefix("random:")
    if Path(target).is_dir():
        model = load_optimized(target).eval()
        meta = getattr(model, "metadata", {}) or {}
        if random_init:
            model = _fresh(model, seed).eval()
            meta = {k: v for k, v in meta.items() if k in ("mean", "std", "crop_pct")}
        params = saved_model_eval_params(model.input_spec, meta, info.mean, info.std,
                                         None if random_init else getattr(model, "pretrained_cfg", None))
        optimize = meta.get("optimize", "none") if not random_init else "none"
        return Backbone(spec, "random init" if random_init else "trained", model, params, optimize)
    if target in list_models():
        torch.manual_seed(seed)
        model = create_model(target, num_classes=0, in_chans=info.in_chans).eval()
        params = {**dataset_transform, "size": model.input_spec.img_size[0]}
        return Backbone(spec, "random init", model, params)
    if Path(target).exists():
        raise ValueError(f"{target} is a file; expected a model directory (config.json + weights), a registered "
                         "model name, random:DIR_OR_NAME or 'pixels'")
    raise ValueError(f"{spec!r} is neither a model directory nor a registered model name; expected a directory "
                     "a training run wrote (best/ or final/), a name from `vitkit models`, random:DIR_OR_NAME or "
                     "'pixels'")
