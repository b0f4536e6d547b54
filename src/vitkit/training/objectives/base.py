"""What a training run optimises, apart from how the loop runs it.

The loop (`training/trainer.py`) owns resume, DDP, accumulation, bf16, EMA, checkpoints, metrics and
progress; an objective owns everything about the task: what it trains around the backbone (a head, a
decoder, an EMA teacher), the views it makes of a batch, the losses, per-step schedules and how a model is
scored on the validation split (the selection metric is the objective's). MAE's `engine_pretrain` and
timm's `train.py` make the same split between the loop and the task.
"""

from dataclasses import fields

import torch
from torch import nn

from ...data.transforms import AugmentConfig, EvalTransform


class Objective:
    """Subclasses set `name` and `selection_metric` and implement `views`, `loss` and `evaluate`.

    Lifecycle, per run: `setup(augment)` and `build(backbone)` once (the module `build` returns is what
    the optimizer, DDP, EMA and checkpoints see), then per optimizer step `views` on the whole global batch
    (every process makes identical views from the step's generator and keeps its slice: every tensor in the
    views is sliced along dim 0), `loss` per micro-batch, `after_step` after the update; `evaluate` on the
    validation split each evaluation and on the test split once at the end; `backbone(module)` is what
    `best/` and `final/` hold."""

    name = "objective"
    selection_metric = "top1"  # a key of `evaluate`'s result; higher is better
    saves_confusion = False  # the test report has a confusion matrix to draw
    find_unused_parameters = False  # DDP: some parameters get no gradient (e.g. the pooling norm MAE skips)

    def setup(self, augment: AugmentConfig) -> None:
        """The run's augmentation options, input size and normalisation, once the backbone is built."""
        self.augment, self.eval_tf = augment, EvalTransform(augment)

    def model_kwargs(self) -> dict:
        """Backbone arguments the objective sets unless the run's `model_kwargs` say otherwise."""
        return {}

    def build(self, backbone: nn.Module) -> nn.Module:
        return backbone

    def backbone(self, module: nn.Module) -> nn.Module:
        return module

    def views(self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> tuple:
        raise NotImplementedError

    def loss(self, module: nn.Module, views: tuple) -> dict[str, torch.Tensor]:
        """{"loss": the scalar to minimise, other terms to log (detached floats or tensors)}."""
        raise NotImplementedError

    def start_step(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        """Before each optimizer step (`step` optimizer steps done so far): set per-step schedules."""

    def before_update(self, module: nn.Module) -> None:
        """After the backward passes, before clipping and the optimizer step (e.g. freeze a layer's gradient)."""

    def after_step(self, module: nn.Module, step: int, total_steps: int) -> None:
        """Per-step schedules (teacher momentum, temperatures); `step` counts finished optimizer steps."""

    def evaluate(self, model: nn.Module, dataset, split: str) -> dict:
        """Metrics of a backbone (or the EMA's) on a split: at least `selection_metric`. May return a
        `report` object under "report" for the test split's eval.json."""
        raise NotImplementedError

    def visualize(self, module: nn.Module, dataset, out_dir, epoch: int) -> None:
        """Pictures of what the objective does (MAE: reconstructions), written under `out_dir` each evaluation."""

    def collapsed(self, metrics: dict) -> str | None:
        """A reason when `metrics` show a collapsed representation (never selected as best), else None."""
        return None


def slice_views(views, lo: int, hi: int):
    """Every tensor in (nested tuples / lists / dicts of) views, rows lo:hi."""
    if isinstance(views, torch.Tensor):
        return views[lo:hi]
    if isinstance(views, dict):
        return {k: slice_views(v, lo, hi) for k, v in views.items()}
    if isinstance(views, list | tuple):
        return type(views)(slice_views(v, lo, hi) for v in views)
    return views


def to_device(views, device: torch.device):
    if isinstance(views, torch.Tensor):
        return views.to(device)
    if isinstance(views, dict):
        return {k: to_device(v, device) for k, v in views.items()}
    if isinstance(views, list | tuple):
        return type(views)(to_device(v, device) for v in views)
    return views


def objective_options(config_cls: type, args: dict, objective: str):
    """`objective_args` as the objective's config dataclass; unknown keys named with the valid ones."""
    valid = [f.name for f in fields(config_cls)]
    unknown = sorted(set(args) - set(valid))
    if unknown:
        raise ValueError(f"unknown {objective} option(s) {unknown}; valid: {', '.join(valid)}")
    return config_cls(**args)
