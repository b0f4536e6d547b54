"""Class attention (Touvron et al., "Going deeper with Image Transformers", 2021): only the class token
queries; it attends to itself and every patch token. CaiT's and XCiT's last blocks; timm's `ClassAttn`."""

from collections.abc import Callable

import torch
from torch import nn

from .linear import apply_linear


class ClassAttn(nn.Module):
    """Attention from the class token (x[:, 0]) to all tokens; returns the class token's update (B, 1, C).
    Computed explicitly (one query row: nothing for a fused kernel to save), so `on_attention` receives the
    (B, heads, 1, N) probabilities that produced the output, in the autograd graph."""

    attention_grad: bool = False  # always explicit: the mode changes nothing here

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.on_attention: Callable[[torch.Tensor], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(apply_linear(x[:, :1], self.q)), heads(apply_linear(x, self.k)), heads(apply_linear(x, self.v))
        probs = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, N)
        if self.on_attention is not None:
            self.on_attention(probs)
        x = (self.attn_drop(probs) @ v).transpose(1, 2).reshape(B, 1, C)
        return self.proj_drop(apply_linear(x, self.proj))
