"""ONNX export with a dynamic batch, onnxruntime inference, and int8 through onnxruntime's quantizer.

Needs the `onnx` extra (onnx, onnxscript, onnxruntime): `pip install vitkit[onnx]`.
"""

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..weights.io import atomic_write


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise RuntimeError(f"ONNX export needs onnx, onnxscript and onnxruntime ({err}); "
                           "install them with: pip install 'vitkit[onnx]'") from None


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = 20) -> Path:
    """Write `model` (float32, eval) as ONNX with inputs `images` (batch, C, H, W) and outputs `logits`."""
    _require_onnx()
    from .reducer import reduces_tokens

    if reduces_tokens(model):
        raise ValueError("export the model without tome/evit: ONNX graphs of data-dependent token selection "
                         "are not supported by vitkit yet")
    c = model.config
    model = model.eval()
    example = torch.randn(2, c.in_chans, c.img_size, c.img_size)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), tmp, input_names=["images"], output_names=["logits"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, opset_version=opset, dynamo=True,
                verbose=False, external_data=False,
            )

    atomic_write(path, write)
    return Path(path)


def quantize_onnx_int8(src: str | os.PathLike, dst: str | os.PathLike, keep_head_float: bool = True) -> Path:
    """onnxruntime dynamic int8 (weights int8, activations quantized per batch) of the MatMul/Gemm nodes;
    the classifier head stays float by default."""
    _require_onnx()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(src))
    graph = proto.graph
    head_inputs = {init.name for init in graph.initializer if init.name.startswith(("head.", "head_dist."))}
    exclude = [n.name for n in graph.node if keep_head_float and head_inputs & set(n.input)]
    # The exporter's intermediate shape annotations trip the quantizer's own shape inference; it
    # re-infers them anyway.
    del graph.value_info[:]

    def write(tmp: str) -> None:
        onnx.save(proto, tmp)
        quantize_dynamic(tmp, tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         nodes_to_exclude=exclude)

    atomic_write(dst, write)
    return Path(dst)


class OnnxModel(nn.Module):
    """An onnxruntime session behind the `model(images) -> logits` call, for vitkit's evaluation code."""

    def __init__(self, path: str | os.PathLike, config=None, threads: int | None = None):
        super().__init__()
        _require_onnx()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.config = config
        self.path = Path(path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach().to("cpu", torch.float32).contiguous()
        return torch.from_numpy(self.session.run(None, {self.input_name: images.numpy()})[0])
