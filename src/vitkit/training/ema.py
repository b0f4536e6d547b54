"""Exponential moving average of a model's weights, kept in float32 beside it."""

import copy

import torch
from torch import nn


class ModelEma:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_t, t in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if ema_t.dtype.is_floating_point:
                ema_t.lerp_(t.detach(), 1.0 - self.decay)
            else:
                ema_t.copy_(t)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.module.load_state_dict(state_dict)
