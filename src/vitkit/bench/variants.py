"""What `vitkit bench` can run: a model under an optimization spec, in onnxruntime, or as a peer library's
model carrying the same weights."""

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..efficiency import optimize, parse_spec
from ..efficiency.onnx_export import check_onnx_spec
from ..efficiency.spec import spec_to_string, split_top_level

# the exported model in onnxruntime: fp32; int8 linear layers (dynamic); and also static int8 convolutions
# calibrated on training images (a conv stem's stages; needs a dataset)
RUNTIMES = ("onnx", "onnx-int8", "onnx-int8-static")
CALIBRATED_RUNTIME = "onnx-int8-static"
PEERS = {"hf": "transformers", "timm": "timm"}
PRECISION_ITEMS = ("int8", "bf16", "compile")  # change how the arithmetic runs, not how much there is


def split_runtime(variant: str) -> tuple[str, str | None]:
    """'tome:r=8,onnx-int8' -> ('tome:r=8', 'onnx-int8'); 'tome:r=8' -> ('tome:r=8', None)."""
    *items, last = split_top_level(variant, ",")
    if last in RUNTIMES:
        return ",".join(items) or "none", last
    return variant, None


def canonical_variant(text: str) -> str:
    """A spec in canonical form ('tome:r=8,int8'), optionally ending in an onnx runtime ('tome:r=8,onnx-int8');
    ValueError if invalid. In a list of variants, items of one spec are joined with '+': 'tome:r=8+int8'."""
    items = [item for item in split_top_level(text.lower().replace(" ", "").replace("+", ","), ",") if item]
    runtimes = [item for item in items if item in RUNTIMES]
    if not runtimes:
        return spec_to_string(parse_spec(",".join(items)))
    if len(runtimes) > 1:
        raise ValueError(f"{text!r} names {len(runtimes)} runtimes; choose one of {', '.join(RUNTIMES)}")
    spec = parse_spec(",".join(item for item in items if item not in RUNTIMES))
    check_onnx_spec(spec)
    return ",".join([spec_to_string(spec)] * bool(spec) + runtimes)


def build_variant(model: nn.Module, variant: str, example: torch.Tensor, workdir: Path,
                  calibration: list[torch.Tensor] | None = None) -> nn.Module:
    """`model` (untouched) under `variant`. ONNX files go to `workdir` and are reused if already there.
    `calibration` (training images, transformed for the model) is what onnx-int8-static calibrates on."""
    spec, runtime = split_runtime(variant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. bf16 without native support: the numbers speak
        optimized = optimize(model, spec, example=example[:2])
    if runtime is None:
        return optimized
    if runtime == CALIBRATED_RUNTIME and not calibration:
        raise ValueError("onnx-int8-static calibrates on training images: measure a trained model on a dataset "
                         "(--checkpoint with --data)")
    from ..efficiency.onnx_export import OnnxModel, export_onnx, quantize_onnx_int8

    workdir.mkdir(parents=True, exist_ok=True)
    stem = "model" if spec == "none" else "model-" + re.sub(r"[^a-z0-9=.]+", "_", spec)
    path = workdir / f"{stem}.onnx"
    if not path.is_file():
        export_onnx(optimized, path)
    if runtime != "onnx":
        fp32, path = path, workdir / f"{stem}-{runtime.removeprefix('onnx-')}.onnx"
        if not path.is_file():
            quantize_onnx_int8(fp32, path, calibration=calibration if runtime == CALIBRATED_RUNTIME else None)
    return OnnxModel(path, model.config)


def uses_onnxruntime(variant: str) -> bool:
    return split_runtime(variant)[1] is not None


def needs_calibration(variant: str) -> bool:
    """Whether building `variant` needs training images (its convolutions are calibrated static int8)."""
    return split_runtime(variant)[1] == CALIBRATED_RUNTIME


def flop_variant(variant: str) -> str:
    """The float spec with the same arithmetic: FLOPs do not depend on precision, compilation or runtime."""
    spec, _ = split_runtime(variant)
    return spec_to_string([item for item in parse_spec(spec) if item.name not in PRECISION_ITEMS])


class LogitsOnly(nn.Module):
    """A transformers model called like a vitkit one: images in, what the equal vitkit model returns out.

    That is the classifier's `logits`; CLIP's projected `image_embeds` (vitkit's head is the projection);
    and for a feature tower (vitkit's num_classes=0, e.g. `Dinov2Model`, `SiglipVisionModel`, `ConvNextModel`,
    `SwinModel`) the `pooler_output`, which is vitkit's pooled, pre-logits output."""

    OUTPUTS = ("logits", "image_embeds", "pooler_output")  # the first one the output has

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        for name in self.OUTPUTS:
            if getattr(out, name, None) is not None:
                return getattr(out, name)
        raise TypeError(f"{type(self.model).__name__} returned none of {', '.join(self.OUTPUTS)}")


def build_peer(model: nn.Module, peer: str) -> nn.Module:
    """The peer library's model with `model`'s weights. Raises ImportError when the library does not
    import, ValueError when it has no equal model."""
    if peer == "hf":
        import transformers

        from ..weights.hf import to_transformers

        transformers.logging.disable_progress_bar()
        return LogitsOnly(to_transformers(model))
    if peer == "timm":
        from ..weights.timm import to_timm

        return to_timm(model)
    raise ValueError(f"unknown peer {peer!r}; valid: {', '.join(PEERS)}")
