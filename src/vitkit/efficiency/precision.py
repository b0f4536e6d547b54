"""bf16 weights and activations, and int8 dynamic quantization of the linear layers."""

import warnings

import torch
from torch import nn

from ..models._groups import layer_ids


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them, CPU bf16 matmuls are converted to float and back."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def to_bf16(model: nn.Module) -> nn.Module:
    device = next(model.parameters()).device
    if device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 (AVX512-BF16 or AMX): "
            "bf16 runs emulated and is usually slower than float32 here",
            stacklevel=3,
        )
    model = model.to(torch.bfloat16)
    model.register_forward_pre_hook(_inputs_to_bf16)  # any family: float32 images in, as before
    return model


def _inputs_to_bf16(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.to(torch.bfloat16) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def int8_engine() -> str:
    """The quantized-kernel backend for this machine, or a clear error when there is none."""
    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in engines:
            return engine
    raise RuntimeError(f"int8 needs a quantized backend (x86, fbgemm or qnnpack); this torch has {engines}")


def quantize_int8(model: nn.Module, skip_blocks: list[int] = (), quantize_head: bool = False) -> nn.Module:
    """Dynamic int8 quantization of the model's linear layers (weights int8 per tensor, activations
    quantized per batch on the fly; no calibration set needed). Any family: layers are found by type,
    and blocks and head by the model's `group_matcher`.

    Convolutions (a patch embedding, a stem, ConvNeXt's depthwise convolutions) are never quantized; the
    head and the blocks in `skip_blocks` (indices into the model's blocks, or stages' blocks, in order)
    stay float: naive full-int8 models lose accuracy mostly there.
    """
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise RuntimeError(f"int8 dynamic quantization runs on CPU only; this model is on {device}. Use bf16 on GPU")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise RuntimeError("int8 quantization needs a float32 model")
    ids = layer_ids(model)  # stem 0, blocks 1..n, head n + 1
    head_id = max(ids.values())
    depth = head_id - 1
    skip = {b + depth if b < 0 else b for b in skip_blocks}
    bad = sorted(b for b in skip if not 0 <= b < depth)
    if bad:
        raise ValueError(f"int8 skip blocks {bad} are out of range for a model with {depth} blocks")
    targets = {
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not (ids[f"{name}.weight"] == head_id and not quantize_head)
        and ids[f"{name}.weight"] - 1 not in skip
    }
    if not targets:
        raise ValueError(f"int8: {type(model).__name__} has no linear layers left to quantize (dynamic int8 "
                         "quantizes nn.Linear; this model's are convolutions or kept float); try bf16, onnx-int8 "
                         "with calibration, or compile")
    torch.backends.quantized.engine = int8_engine()
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao, which has no fast eager CPU
        # int8 path yet; see docs/optimize.md for the comparison behind this choice.
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {name: default_dynamic_qconfig for name in targets}, inplace=True)
