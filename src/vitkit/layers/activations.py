"""Activations by timm's `act_layer` names, and the ones torch has no module for."""

import torch
from torch import nn


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation, x * sigmoid(1.702 x) (timm's `act_layer='quick_gelu'`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _gelu_tanh() -> nn.Module:
    return nn.GELU(approximate="tanh")


# timm's `act_layer` strings -> module factories (every family takes `act_layer` by these names)
ACT_LAYERS = {"gelu": nn.GELU, "gelu_tanh": _gelu_tanh, "relu": nn.ReLU, "silu": nn.SiLU, "quick_gelu": QuickGELU}
