"""Parameter and FLOP counts.

torch's flop counter has no formula for the CPU fused-attention kernel, so it would count attention
as free; we register one (QK^T and AV: 2 matmuls of B*H*N*N*d multiply-adds each), and one for oneDNN's
linear layer, which `vitkit.layers.apply_linear` calls in CPU inference.
"""

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_aten = torch.ops.aten


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, n_q, d = query_shape
    n_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * n_q * n_k * d + 2 * b * h * n_q * n_k * d_v


def _linear_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(x_shape) * weight_shape[0]


_CUSTOM_FLOPS = {_aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
    _CUSTOM_FLOPS[torch.ops.mkldnn._linear_pointwise] = _linear_flops


def count_flops(model: nn.Module, input_size: tuple[int, ...], batch_size: int = 1) -> int:
    """Forward FLOPs (a multiply-add counts 2) for one batch of `input_size` = (C, H, W) or (B, C, H, W)."""
    if len(input_size) == 3:
        input_size = (batch_size, *input_size)
    if len(input_size) != 4:
        raise ValueError(f"input_size must be (C, H, W) or (B, C, H, W), got {input_size}")
    param = next(model.parameters())
    x = torch.zeros(input_size, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
