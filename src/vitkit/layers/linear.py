"""Linear layers for CPU inference through oneDNN, with the activation after them fused in.

PyTorch's `nn.Linear` on CPU calls MKL's GEMM and then runs the activation as a second pass over the
output. In eager fp32 inference, `apply_linear` instead calls oneDNN's matmul primitive (PyTorch's
`mkldnn._linear_pointwise`) with GELU, ReLU or SiLU as a post-op: the wide MLP activation is written once.
On a 2-core AVX512 machine that is 10-30% faster per MLP than MKL + GELU across ViT-Ti..B shapes and
batches 1..32, and oneDNN's plain matmul is up to 28% faster than MKL's for the larger layers (qkv, proj);
small layers stay with MKL, whose per-call overhead is lower (thresholds below; BENCHMARKS.md). Results
agree to float rounding (~1e-6 relative).

Everything else (autograd on, autocast, bf16/int8 or wrapped weights, tracing, torch.compile, torch.export,
ONNX export, other devices) takes the plain `F.linear` path, so graphs and exported models are unchanged. A
layer that is not an `nn.Linear` (e.g. one int8 quantization swapped in), or one with hooks (observers,
attribution tools, pruning), is called as a module, so its hooks run.
"""

import torch
import torch.nn.functional as F
from torch import nn

# oneDNN pays ~15-25 us more per call than MKL: below these sizes (multiply-adds, rows x in x out) MKL
# wins, and a plain layer with few inputs (PVTv2-b0's 32-64 channels) stays MKL's too (2-core AVX512 sweep,
# BENCHMARKS.md). A fused activation saves a pass over the output, so oneDNN wins from smaller sizes there.
ONEDNN_MIN_MACS = 1 << 24
ONEDNN_MIN_MACS_FUSED = 1 << 21
ONEDNN_MIN_IN_FEATURES = 128

try:
    _onednn_linear = torch.ops.mkldnn._linear_pointwise
except (AttributeError, RuntimeError):  # a build without oneDNN
    _onednn_linear = None


def eager_cpu_inference(x: torch.Tensor) -> bool:
    """True in plain eager CPU inference: no autograd, tracing, export or compiler that needs the plain graph.
    Only a plain tensor qualifies (not an FX proxy, a fake tensor or another subclass), so the attribute
    queries below never run on a traced value."""
    return (
        not torch.is_grad_enabled()
        and type(x) is torch.Tensor
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
        and not torch.onnx.is_in_onnx_export()
        and x.device.type == "cpu"
    )


def _post_op(act: nn.Module | None) -> tuple[str, str] | None:
    """oneDNN's name and algorithm for an activation module it can fuse, else None."""
    if act is None or type(act) is nn.Identity:
        return "none", ""
    if type(act) is nn.GELU:
        return "gelu", act.approximate
    if type(act) is nn.ReLU and not act.inplace:
        return "relu", ""
    if type(act) is nn.SiLU and not act.inplace:
        return "swish", ""
    return None


def _use_onednn(x: torch.Tensor, weight: torch.Tensor, fused: bool) -> bool:
    if not (
        _onednn_linear is not None
        and eager_cpu_inference(x)
        and type(weight) in (torch.Tensor, nn.Parameter)  # not a quantized or otherwise wrapped weight
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and x.is_contiguous()  # a strided input costs oneDNN a reorder that MKL's GEMM does not pay
    ):
        return False
    out_features, in_features = weight.shape
    macs = x.numel() * out_features
    if fused:
        return macs >= ONEDNN_MIN_MACS_FUSED
    return macs >= ONEDNN_MIN_MACS and in_features >= ONEDNN_MIN_IN_FEATURES


def _hooked(layer: nn.Module) -> bool:
    """Hooks on the layer or on every module, or a `forward` patched onto the instance (accelerate, LoRA
    injectors): then the layer is called as a module."""
    own = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    every_module = ("_global_forward_hooks", "_global_forward_pre_hooks")
    return "forward" in vars(layer) or any(getattr(layer, name, None) for name in own) or any(
        getattr(nn.modules.module, name, None) for name in every_module)


def apply_linear(x: torch.Tensor, layer: nn.Module, act: nn.Module | None = None,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """`act(layer(x))` (`act` optional), through oneDNN with the activation fused where that applies.

    `bias` is for a layer without one of its own (BEiT's q/v bias with the zero k bias between them): inside
    the matmul where the layer is a plain `nn.Linear`, added after it otherwise."""
    if bias is not None and isinstance(getattr(layer, "bias", None), torch.Tensor):  # int8 layers: bias()
        raise ValueError("apply_linear: bias= is for a layer without a bias of its own; this one has one")
    if type(layer) is nn.Linear and not _hooked(layer):
        bias = layer.bias if bias is None else bias
        post_op = _post_op(act)
        if post_op is not None and _use_onednn(x, layer.weight, fused=post_op[0] != "none"):
            return _onednn_linear(x, layer.weight, bias, post_op[0], [], post_op[1])
        y = F.linear(x, layer.weight, bias)
    else:
        y = layer(x) if bias is None else layer(x) + bias
    return y if act is None else act(y)
