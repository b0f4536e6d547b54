"""Attention pooling with a learned latent query (timm's `AttentionPoolLatent`, SigLIP's MAP head).

Parameter names follow timm: `latent`, `q`, `kv`, `proj`, `norm`, `mlp.fc1`, `mlp.fc2`.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .linear import apply_linear
from .mlp import Mlp


class AttentionPoolLatent(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        latent_len: int = 1,
        pool_type: str = "token",
        norm_eps: float = 1e-6,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if pool_type not in ("token", "avg", ""):
            raise ValueError(f"pool_type={pool_type!r} is not one of ('token', 'avg', '')")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.latent_len = latent_len
        self.pool = pool_type
        self.latent = nn.Parameter(torch.zeros(1, latent_len, dim))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.latent, std=self.latent.shape[-1] ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, D) to (B, D) (`pool_type` 'token' or 'avg') or (B, latent_len, D) ('')."""
        B, N, C = x.shape
        q = apply_linear(self.latent.expand(B, -1, -1), self.q)
        q = q.reshape(B, self.latent_len, self.num_heads, self.head_dim).transpose(1, 2)
        kv = apply_linear(x, self.kv).reshape(B, N, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        x = self.proj_drop(apply_linear(x.transpose(1, 2).reshape(B, self.latent_len, C), self.proj))
        x = x + self.mlp(self.norm(x))
        if self.pool == "token":
            return x[:, 0]
        if self.pool == "avg":
            return x.mean(dim=1)
        return x
