"""The backbone contract: what every vitkit model family provides, and what consumers (CLI, trainer,
bench, optimize, probes, trust tools) may rely on instead of one family's fields.

Method names and signatures are timm's, so a timm user knows them. Families implement them on their
model class; `tests/contract/` checks every registered model against this file.
"""

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """What the model expects as input (timm keeps this in its pretrained cfg, apart from the
    architecture's constructor arguments).

    Args:
        in_chans: image channels.
        img_size: (height, width) the model was built for (and is evaluated at).
        fixed_size: True when only `img_size` works (absolute position embeddings without resampling,
            attention biases of a fixed grid); False when other sizes work too.
        size_multiple: other sizes must be multiples of this (patch size, total stride, windows).
        mean, std: per-channel normalisation in [0, 1] pixel units.
        crop_pct: eval resize: shorter side to img_size / crop_pct, then a centre crop.
        interpolation: eval resize interpolation ("bicubic" or "bilinear").
    """

    in_chans: int = 3
    img_size: tuple[int, int] = (224, 224)
    fixed_size: bool = False
    size_multiple: int = 1
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"


@dataclass(frozen=True)
class FeatureInfo:
    """One stage (or block) whose output `forward_intermediates` can return, as timm's `feature_info`."""

    num_chs: int
    reduction: int  # input pixels per feature-map pixel
    module: str  # the module's name in `named_modules()`


@runtime_checkable
class Backbone(Protocol):
    """Every family. `forward_intermediates(..., output_fmt="NCHW")` gives (B, C, H, W) maps for every
    family; `feature_info[i]` describes index i of what it returns."""

    config: object  # the family's config dataclass (constructor arguments, timm names)
    num_classes: int
    num_features: int
    feature_info: list[FeatureInfo]

    @property
    def input_spec(self) -> InputSpec: ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False): ...

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None: ...

    def no_weight_decay(self) -> set[str]: ...

    def group_matcher(self, coarse: bool = False) -> dict: ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...


@runtime_checkable
class TokenSequence(Backbone, Protocol):
    """Capability: one token sequence runs through all blocks (ViT, DeiT, DINOv2, CLIP, SigLIP, ...).
    Token-level tools (ToMe, EViT, masked pretraining, attention rollout) ask for it and refuse other
    models with a reason."""

    num_prefix_tokens: int
    blocks: nn.Sequential

    def embed(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor: ...


def input_spec_of(model: nn.Module) -> InputSpec:
    """The model's InputSpec, with a clear error for a model that does not implement the contract."""
    spec = getattr(model, "input_spec", None)
    if not isinstance(spec, InputSpec):
        raise TypeError(f"{type(model).__name__} does not declare an input_spec (vitkit's backbone contract)")
    return spec


def with_pretrained_cfg(spec: InputSpec, model: nn.Module) -> InputSpec:
    """`spec` (a family's defaults) with the mean / std / crop_pct / interpolation of the model's weights:
    `model.pretrained_cfg`, set by `create_model` from the registered name or read from a checkpoint."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    for key in ("mean", "std"):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
            if len(cfg[key]) != spec.in_chans:  # RGB weights refitted to another channel count
                cfg[key] = (sum(cfg[key]) / len(cfg[key]),) * spec.in_chans
    return replace(spec, **cfg)
