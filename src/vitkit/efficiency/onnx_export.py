"""ONNX export with a dynamic batch, onnxruntime inference, and int8 through onnxruntime's quantizer.

Needs the `onnx` extra (onnx, onnxscript, onnxruntime): `pip install vitkit[onnx]`.
"""

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..weights.io import atomic_write
from .finite_rows import run_finite_rows, unwrap
from .optimize import example_input


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise RuntimeError(f"ONNX export needs onnx, onnxscript and onnxruntime ({err}); "
                           "install them with: pip install 'vitkit[onnx]'") from None


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = 20) -> Path:
    """Write `model` (float32, eval) as ONNX with inputs `images` (batch, C, H, W) and outputs `logits`.

    Token merging and pruning export too: how many tokens each block keeps depends only on the input
    size, so the graph is static; which tokens merge is computed in the graph (ArgMax, TopK, Gather,
    ScatterElements). Precision and compilation are onnxruntime's business: export the float model and
    quantize the file (`quantize_onnx_int8`)."""
    _require_onnx()
    model = unwrap(model)  # the network, without optimize's eager-only check for non-finite rows
    check_exportable(model)
    model = model.eval()
    example = example_input(model)

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


def quantize_onnx_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    keep_head_float: bool = True,
    calibration: Iterable[torch.Tensor] | None = None,
    static_linear: bool = False,
) -> Path:
    """int8 through onnxruntime's quantizer. The classifier head stays float by default, and so does the
    first convolution (the patch embedding or first stem stage sees the raw image; in int8 it cost the
    Fashion-MNIST model 4.8 points), and products of two activations (attention, ToMe's similarities).

    Linear layers (MatMul/Gemm with a weight) are dynamic int8: weights int8, each activation's range
    measured per batch at run time. With `calibration` (image batches, normalized as the model expects)
    the other convolutions, a convolutional stem's stages, become static int8 too (QLinearConv, weights
    per output channel, activation ranges from those batches by min/max); `static_linear=True` makes the
    linear layers static as well (QLinearMatMul). Calibrated convolutions made the Fashion-MNIST model
    ~10% faster; static linear layers were no faster than dynamic ones here (BENCHMARKS.md)."""
    _require_onnx()
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    proto = onnx.load(str(src))
    graph = proto.graph
    head_inputs = {init.name for init in graph.initializer if init.name.startswith(("head.", "head_dist."))}
    head_nodes = [n.name for n in graph.node if keep_head_float and head_inputs & set(n.input)]
    # The quantizer first rewrites a Gemm as "<name>_MatMul" (+ Add); exclude the node under both names.
    exclude = head_nodes + [f"{name}_MatMul" for name in head_nodes]
    convs = [n.name for n in graph.node if n.op_type == "Conv"]  # nodes are in topological order
    # Convolutions take weights per output channel (after batch norm is folded in, channels differ widely);
    # linear layers per tensor: per-channel MatMul came out 3x less accurate in onnxruntime 1.31.
    static_passes = [(["Conv"], True)] * (len(convs) > 1) + [(["MatMul", "Gemm"], False)] * static_linear
    options = {"MatMulConstBOnly": True}
    # The exporter's intermediate shape annotations trip the quantizer's own shape inference; it
    # re-infers them anyway.
    del graph.value_info[:]

    input_name = graph.input[0].name
    calibration = [batch.detach().float().cpu().numpy() for batch in calibration or []]
    if static_linear and not calibration:
        raise ValueError("static_linear needs calibration batches: static int8 fixes activation ranges from them")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    def write(tmp: str) -> None:
        onnx.save(proto, tmp)
        for op_types, per_channel in static_passes if calibration else []:
            quantize_static(tmp, tmp, Reader(), quant_format=QuantFormat.QOperator, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=op_types, nodes_to_exclude=exclude + convs[:1],
                            extra_options=options)
            static = onnx.load(tmp)
            del static.graph.value_info[:]
            onnx.save(static, tmp)
        if not static_linear:
            quantize_dynamic(tmp, tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                             nodes_to_exclude=exclude, extra_options=options)

    atomic_write(dst, write)
    return Path(dst)


def calibration_batches(model: nn.Module, data: str, count: int, batch_size: int = 64) -> list[torch.Tensor]:
    """The first `count` images of `data`'s training split, transformed as `model` is evaluated: what static
    int8 calibrates on (never the test split it is then measured on)."""
    from ..data import build_dataset
    from ..data.batches import eval_batches
    from ..data.transforms import saved_model_eval_transform

    if count <= 0:
        raise ValueError(f"calibration needs at least one image; got count={count}")
    dataset = build_dataset(data, "train")
    transform = saved_model_eval_transform(model.input_spec, getattr(model, "metadata", None) or {},
                                           dataset.info.mean, dataset.info.std, getattr(model, "pretrained_cfg", None))
    batches, seen = [], 0
    for images, _ in eval_batches(dataset, transform, batch_size):
        batches.append(images[:count - seen])
        seen += len(batches[-1])
        if seen >= count:
            break
    return batches


def check_onnx_spec(items: list) -> None:
    """An ONNX graph takes token reduction only: it is exported in float and onnxruntime does the rest."""
    other = [item.name for item in items if item.name not in ("tome", "evit")]
    if other:
        raise ValueError(f"an ONNX graph takes token reduction only (tome, evit) and does not take {', '.join(other)}: "
                         "it is exported in float, and int8 is onnxruntime's (onnx-int8 in vitkit bench, --int8 in "
                         "vitkit export)")


def check_exportable(model: nn.Module) -> None:
    """A float32 PyTorch model: no int8 layers, no bf16 weights, not compiled."""
    if hasattr(model, "_orig_mod"):
        raise ValueError("export the model before torch.compile: leave 'compile' out of the spec")
    quantized = [name for name, m in model.named_modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]
    if quantized:
        raise ValueError(f"export the float model and quantize the ONNX file (int8 through onnxruntime) instead of "
                         f"exporting torch int8 layers ({quantized[0]}, ...): leave 'int8' out of the spec")
    not_float = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if not_float:
        raise ValueError(f"ONNX export takes a float32 model; this one has {', '.join(not_float)} weights "
                         "(leave 'bf16' out of the spec)")


class OnnxModel(nn.Module):
    """An onnxruntime session behind the `model(images) -> logits` call, for vitkit's evaluation code.

    Images holding inf or NaN are not run: their logits are NaN, and the other images' logits are those
    of running them alone (int8 measures activation ranges over the whole batch, so one bad image would
    otherwise change every other image's logits); see `finite_rows.py`."""

    def __init__(self, path: str | os.PathLike, config=None, threads: int | None = None):
        super().__init__()
        _require_onnx()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # onnxruntime's threads otherwise spin for a while after each run, taking the cores from whatever
        # runs next in the process (PyTorch, in every side-by-side comparison vitkit makes)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.config = config
        self.path = Path(path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach().to("cpu", torch.float32).contiguous()
        return run_finite_rows(self._run, images, self._output_row_shape)

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: images.contiguous().numpy()})[0])

    def _output_row_shape(self) -> tuple[int, ...]:
        shape = self.session.get_outputs()[0].shape[1:]
        if all(isinstance(d, int) for d in shape):
            return tuple(shape)
        if self.config is None:
            raise ValueError(f"{self.path} has a dynamic output size and no config to give it")
        return (self.config.num_classes,)
