"""Activations that torch has no module for."""

import torch
from torch import nn


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation, x * sigmoid(1.702 x) (timm's `act_layer='quick_gelu'`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)
