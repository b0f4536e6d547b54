"""Multi-head self-attention on torch's fused scaled_dot_product_attention.

`on_attention` is an optional callback that receives the attention probabilities
(B, heads, N, N). They are computed beside the fused kernel, not instead of it, so the
output stays bit-for-bit the fused one and the cost is paid only while someone listens
(see `vitkit.evaluation.attention_maps`).

With `attention_grad = True` (opt-in, `capture_attention(model, grad=True)`) the attention is computed
explicitly instead, softmax(q k^T * scale + bias) @ v, and `on_attention` receives the probabilities
that produced the output, still in the autograd graph: gradient-weighted relevance (Chefer et al. 2021)
needs d(score)/d(attention). The output then equals the fused one within float tolerance, not bit for bit.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .linear import apply_linear


class Attention(nn.Module):
    attention_grad: bool = False  # explicit attention, probabilities in the autograd graph (module docstring)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.on_attention: Callable[[torch.Tensor], None] | None = None

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """`attn_bias` is added to the attention logits (e.g. ToMe's log token sizes)."""
        return self.attend(*self.project_qkv(x), attn_bias)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The second half of `forward`, for callers that also need q or k (token merging, pruning)."""
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        if self.attention_grad:
            probs = self.attention_weights(q, k, attn_bias)
            if self.on_attention is not None:
                self.on_attention(probs)
            x = F.dropout(probs, self.attn_drop, self.training) @ v
        else:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias, dropout_p=self.attn_drop if self.training else 0.0
            )
            if self.on_attention is not None:
                self.on_attention(self.attention_probs(q, k, attn_bias))
        return self.project_out(x)

    def project_out(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head outputs (B, heads, N, head_dim) -> heads concatenated and projected, (B, N, D)."""
        x = x.transpose(1, 2).reshape(x.shape[0], -1, self.num_heads * self.head_dim)
        return self.proj_drop(apply_linear(x, self.proj))

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        qkv = apply_linear(x, self.qkv).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def attention_probs(self, q: torch.Tensor, k: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        """The probabilities beside the fused kernel: detached, they carry no gradient."""
        return self.attention_weights(q, k, attn_bias).detach()

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T * scale + bias), (B, heads, N, N), in the autograd graph."""
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if attn_bias is not None:
            logits = logits + attn_bias
        return logits.softmax(dim=-1)
