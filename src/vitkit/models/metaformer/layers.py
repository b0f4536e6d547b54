"""MetaFormer's building blocks: the no-bias norms, StarReLU, the scale vectors (layer scale, res scale) and
the three token mixers (pooling, separable convolution, attention), with timm's parameter names."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import ACT_LAYERS, apply_linear


class GroupNorm1(nn.Module):
    """GroupNorm with one group (normalise over C, H, W; per-channel affine): timm's `GroupNorm1` (eps 1e-5,
    with bias, PoolFormer V1) and `GroupNorm1NoBias` (eps 1e-6, no bias, PoolFormer V2)."""

    def __init__(self, num_channels: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm's `LayerNorm2d`; `bias=False`: `LayerNorm2dNoBias`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


# norm names (timm's class names, lower case) -> (factory, works on NCHW maps)
NORM_LAYERS: dict[str, tuple[Callable[[int], nn.Module], bool]] = {
    "groupnorm1": (lambda d: GroupNorm1(d, eps=1e-5), True),
    "groupnorm1_nobias": (lambda d: GroupNorm1(d, eps=1e-6, bias=False), True),
    "layernorm2d": (lambda d: LayerNorm2d(d, eps=1e-6), True),
    "layernorm2d_nobias": (lambda d: LayerNorm2d(d, eps=1e-6, bias=False), True),
    "layernorm": (lambda d: nn.LayerNorm(d, eps=1e-6), False),
    "layernorm_nobias": (lambda d: nn.LayerNorm(d, eps=1e-6, bias=False), False),
}


class StarReLU(nn.Module):
    """s * relu(x)**2 + b with a learnable scalar scale and bias (MetaFormer baselines)."""

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(scale_value)))
        self.bias = nn.Parameter(torch.full((1,), float(bias_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(x) ** 2 + self.bias


class SquaredReLU(nn.Module):
    """relu(x)**2 (the MLP head's activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(F.relu(x))


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"starrelu": StarReLU, "squaredrelu": SquaredReLU, **ACT_LAYERS}


class Scale(nn.Module):
    """A learnable per-channel scale (timm's `Scale`, parameter `scale`): layer scale on a branch, res scale on
    the shortcut. `nchw`: the channels are dim 1 of a map, else the last dim of tokens."""

    def __init__(self, dim: int, init_value: float, nchw: bool = True):
        super().__init__()
        self.shape = (dim, 1, 1) if nchw else (dim,)
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(self.shape)


class Pooling(nn.Module):
    """PoolFormer's token mixer: average pool (stride 1, padding not counted) minus the input."""

    def __init__(self, pool_size: int = 3):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class SepConv(nn.Module):
    """ConvFormer's token mixer: MobileNetV2's inverted separable convolution (1x1 up, StarReLU, depthwise kxk,
    1x1 down), no biases."""

    def __init__(self, dim: int, expansion_ratio: float = 2, kernel_size: int = 7, padding: int = 3):
        super().__init__()
        mid = int(expansion_ratio * dim)
        self.pwconv1 = nn.Conv2d(dim, mid, kernel_size=1, bias=False)
        self.act1 = StarReLU()
        self.dwconv = nn.Conv2d(mid, mid, kernel_size=kernel_size, padding=padding, groups=mid, bias=False)
        self.act2 = nn.Identity()
        self.pwconv2 = nn.Conv2d(mid, dim, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwconv2(self.act2(self.dwconv(self.act1(self.pwconv1(x)))))


class Attention(nn.Module):
    """CAFormer's token mixer: multi-head self-attention over (B, N, C) tokens, heads of `head_dim` channels
    (num_heads = dim // head_dim unless given), no biases by default.

    `on_attention` is vitkit's attention-map capability (as `vitkit.layers.Attention`): when set it receives
    the (B, heads, N, N) probabilities, computed beside the fused kernel, so the output does not change."""

    def __init__(self, dim: int, head_dim: int = 32, num_heads: int | None = None, qkv_bias: bool = False,
                 proj_bias: bool = False, proj_drop: float = 0.0):
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = max(num_heads or dim // head_dim, 1)
        self.scale = head_dim**-0.5
        inner = self.num_heads * head_dim
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.on_attention: Callable[[torch.Tensor], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = apply_linear(x, self.qkv).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        if self.on_attention is not None:
            self.on_attention(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1).detach())
        out = out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        return self.proj_drop(apply_linear(out, self.proj))


class ConvMlp(nn.Module):
    """The block's MLP, as 1x1 convolutions on NCHW maps or linear layers on tokens (timm's `Mlp` with
    `use_conv`; names fc1, act, fc2)."""

    def __init__(self, dim: int, hidden: int, act_layer: Callable[[], nn.Module], bias: bool, drop: float,
                 use_conv: bool):
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, kernel_size=1, bias=bias)) if use_conv else (
            lambda i, o: nn.Linear(i, o, bias=bias))
        self.fc1 = layer(dim, hidden)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = layer(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(apply_linear(self.drop1(apply_linear(x, self.fc1, self.act)), self.fc2))
