"""AdamW parameter groups (no decay on norms, biases, tokens; optional layer-wise LR decay) and the
warmup + cosine schedule."""

import math

import torch
from torch import nn

from ..models._groups import layer_ids


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW groups. With `layer_decay`, the learning rate of layer id i (from the model's
    `group_matcher`: stem 0, then blocks or stages, head last) is scaled by layer_decay ** (last - i)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    ids = layer_ids(model) if layer_decay is not None else {}
    last = max(ids.values(), default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name in skip or name.endswith(".bias")
        layer = ids.get(name, 0)
        scale = layer_decay ** (last - layer) if layer_decay is not None else 1.0
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale, "decays": not no_decay,
        })
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None = None):
    groups = param_groups(model, weight_decay, layer_decay)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int, lr: float, min_lr: float):
    """Linear warmup from ~0 to each group's lr, then cosine down to min_lr (scaled per group)."""
    floor = min_lr / lr

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cosine_weight_decay(optimizer, step: int, total_steps: int, start: float, end: float) -> float:
    """Set the decaying groups' weight decay for optimizer step `step`: cosine from `start` to `end` over the run
    (DINO's schedule, 0.04 -> 0.4: little decay early, more as the prototypes settle). Returns the value."""
    progress = min(1.0, step / max(1, total_steps - 1))
    value = end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
    for group in optimizer.param_groups:
        if group.get("decays"):
            group["weight_decay"] = value
    return value
