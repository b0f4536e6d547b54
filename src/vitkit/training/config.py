"""Everything a training run is configured by; recipes are YAML files with these keys."""

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.base import parse_classes

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
SDPA_BACKENDS = ("MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")
OBJECTIVES = ("supervised", "mae", "dino")


@dataclass
class TrainConfig:
    model: str = "vit_pico_patch2_8"
    data: str = "digits"
    # what is optimised: supervised (labels; the default) or a self-supervised objective (mae, dino) whose
    # options (`objective_args`) the objective checks; see vitkit.training.objectives
    objective: str = "supervised"
    objective_args: dict[str, Any] = field(default_factory=dict)
    # images of the training split held out for validation (selects best/): a count, a fraction in
    # (0, 1), or 0 to train on everything and keep the final model; None: the dataset's default
    val_split: float | int | None = None
    output: str = "runs/digits"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # timm-named overrides, e.g. {embed_dim: 96}
    init_checkpoint: str | None = None  # start from these weights (fine-tuning); head refit when classes differ
    # train on a fixed, seeded subset of the labels (label-efficiency runs): N images per class, or a
    # stratified fraction; the subset depends on label_seed only, not on the training seed
    labels_per_class: int | None = None
    label_fraction: float | None = None
    label_seed: int = 0
    # train on these classes of the dataset only (indices, or a string such as "0-7"), relabelled 0..k-1:
    # the held-out classes are then near-out-of-distribution data for `vitkit trust`
    classes: list[int] | str | None = None
    img_size: int | None = None  # model input size; default: the model's
    epochs: int = 100
    batch_size: int = 128  # global images per optimizer step, across processes and accumulation
    accum_steps: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    weight_decay_end: float | None = None  # cosine from weight_decay to this over the run (DINO: 0.04 -> 0.4)
    layer_decay: float | None = None  # e.g. 0.75 for fine-tuning: deeper blocks get larger learning rates
    clip_grad: float | None = 1.0
    drop_path: float = 0.1
    # augmentation (see vitkit.data.transforms.AugmentConfig)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    translate: int = 0  # random shift by up to this many pixels per axis after the crop (zero fill, no resampling)
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-n2"
    re_prob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_prob: float = 1.0
    label_smoothing: float = 0.1
    crop_pct: float = 1.0
    # regularisation and precision
    ema_decay: float | None = None  # e.g. 0.9998; evaluated and saved beside the model
    # bf16 autocast: true, false, or "auto" (on where the hardware runs bf16 natively: a CUDA GPU with
    # bf16, or a CPU with AVX512-BF16 or AMX; elsewhere bf16 is emulated and slower than fp32)
    amp: bool | str = False
    # attention kernel for training steps (torch.nn.attention.SDPBackend name, e.g. "math"); None: torch
    # chooses. On CPU with a few dozen tokens the unfused math path trains faster than flash.
    sdpa_backend: str | None = None
    # flush denormal floats to zero while training on CPU: AdamW's second moments of tiny gradients sink into
    # the denormal range, where x86 arithmetic is slow (the Fashion-MNIST recipe trains ~25% faster with it)
    flush_denormal: bool = True
    # distillation from any model vitkit can load
    teacher: str | None = None
    distill: str = "none"  # none | hard (DeiT, through the distillation token) | soft
    distill_alpha: float = 0.5
    distill_tau: float = 1.0
    # bookkeeping
    seed: int = 0
    eval_every: int = 1  # epochs
    ckpt_every: int = 0  # optimizer steps between step checkpoints; 0: only at epoch ends
    keep_last: int = 2
    workers: int = 0  # DataLoader processes for folder datasets
    device: str = "auto"
    max_steps: int | None = None  # stop early (smoke tests)
    # wall-clock budget of this process's training, in minutes: after each epoch the run stops when one more
    # epoch (as long as the longest so far, validation included) would end past it. The lr schedule still
    # spans `epochs`, so a stop cuts its tail: plan `epochs` to fit and let this catch a slower machine.
    time_limit_min: float | None = None
    progress: bool = True

    def __post_init__(self):
        problems = _type_problems(self)
        if problems:  # ranges below assume the types are right
            raise ValueError("invalid training config: " + "; ".join(problems))
        self.scale, self.ratio = tuple(self.scale), tuple(self.ratio)
        for name in ("epochs", "batch_size", "accum_steps", "eval_every", "keep_last"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ckpt_every", "workers", "seed", "translate", "weight_decay", "warmup_epochs", "min_lr", "mixup",
                     "cutmix", "weight_decay_end"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("hflip", "re_prob", "mix_prob", "distill_alpha"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} is a probability or weight in [0, 1], got {getattr(self, name)}")
        for name in ("drop_path", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.batch_size >= 1 and self.accum_steps >= 1 and self.batch_size % self.accum_steps:
            problems.append(f"batch_size {self.batch_size} is not divisible by accum_steps {self.accum_steps}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            problems.append(f"clip_grad must be > 0 (a gradient-norm bound) or null, got {self.clip_grad}")
        if self.time_limit_min is not None and self.time_limit_min <= 0:
            problems.append(f"time_limit_min must be > 0 (minutes) or null, got {self.time_limit_min}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 or null, got {self.max_steps}")
        if not 0 < self.crop_pct <= 1:
            problems.append(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.distill_tau <= 0:
            problems.append(f"distill_tau must be > 0, got {self.distill_tau}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            problems.append(f"scale must be [min, max] with 0 < min <= max <= 1, got {list(self.scale)}")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            problems.append(f"ratio must be [min, max] with 0 < min <= max, got {list(self.ratio)}")
        if self.val_split is not None and not (0 <= self.val_split < 1 or float(self.val_split).is_integer()):
            problems.append(f"val_split must be a count of images, a fraction in (0, 1) or 0, got {self.val_split}")
        if isinstance(self.amp, str) and self.amp != "auto":
            problems.append(f"amp must be true, false or 'auto', got {self.amp!r}")
        if self.labels_per_class is not None and self.label_fraction is not None:
            problems.append("give labels_per_class or label_fraction, not both")
        if self.labels_per_class is not None and self.labels_per_class < 1:
            problems.append(f"labels_per_class must be >= 1, got {self.labels_per_class}")
        if self.label_fraction is not None and not 0 < self.label_fraction <= 1:
            problems.append(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        try:
            parse_classes(self.classes)
        except ValueError as err:
            problems.append(str(err))
        if self.objective not in OBJECTIVES:
            problems.append(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        elif self.objective != "supervised" and self.distill != "none":
            problems.append(f"distill={self.distill!r} is a supervised option; objective {self.objective!r} has none")
        if self.distill not in ("none", "hard", "soft"):
            problems.append(f"distill must be 'none', 'hard' or 'soft', got {self.distill!r}")
        if self.distill != "none" and not self.teacher:
            problems.append(f"distill={self.distill!r} needs a teacher (a model directory or checkpoint)")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            problems.append(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            problems.append(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.sdpa_backend is not None and self.sdpa_backend.upper() not in SDPA_BACKENDS:
            problems.append(f"sdpa_backend must be one of {', '.join(b.lower() for b in SDPA_BACKENDS)} or null, "
                            f"got {self.sdpa_backend!r}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            close = {k: ", ".join(difflib.get_close_matches(k, valid, n=2)) or "?" for k in unknown}
            hints = [f"{k} (did you mean {c})" for k, c in close.items()]
            raise ValueError(f"unknown training option(s): {', '.join(hints)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["scale"], data["ratio"] = list(self.scale), list(self.ratio)
        return data


def _type_problems(cfg: TrainConfig) -> list[str]:
    """Each field checked against its annotation: a YAML typo such as `epochs: 1.5`, `lr: "fast"` or
    `amp: "yes"` is named here instead of failing (or silently misbehaving) mid-run."""
    problems = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _is_instance(value, f.type):
            problems.append(f"{f.name} must be {_describe(f.type)}, got {value!r} ({type(value).__name__})")
    return problems


def _is_instance(value, annotation) -> bool:
    if annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:  # an integer is a fine float (lr: 1 is odd but meaningful)
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if origin is tuple:
        return (isinstance(value, list | tuple) and len(value) == len(args)
                and all(_is_instance(v, a) for v, a in zip(value, args, strict=True)))
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if origin is list:
        return isinstance(value, list | tuple) and all(_is_instance(v, args[0]) for v in value)
    return isinstance(value, annotation)


def _describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if annotation is type(None):
        return "null"
    if origin is tuple:
        return f"a list of {len(args)} numbers"
    if origin is dict:
        return "a mapping"
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def resolve_recipe(name_or_path: str) -> Path:
    """A YAML path, or the name of a recipe shipped with vitkit (`vitkit/recipes/NAME.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"recipe {name_or_path!r} is neither a file nor a shipped recipe ({', '.join(names)})")


def load_recipe(name_or_path: str) -> dict[str, Any]:
    path = resolve_recipe(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of training options, got {type(data).__name__}")
    return data
