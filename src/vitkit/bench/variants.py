"""What `vitkit bench` can run: a model under an optimization spec, in onnxruntime, or as a peer library's
model carrying the same weights."""

import warnings
from pathlib import Path

import torch
from torch import nn

from ..efficiency import optimize, parse_spec
from ..efficiency.spec import spec_to_string

RUNTIMES = ("onnx", "onnx-int8")  # the exported model in onnxruntime, fp32 or int8
PEERS = {"hf": "transformers", "timm": "timm"}
PRECISION_ITEMS = ("int8", "bf16", "compile")  # change how the arithmetic runs, not how much there is


def canonical_variant(text: str) -> str:
    """A spec in canonical form ('tome:r=8,int8'), or an onnx runtime name; ValueError if invalid.
    In a list of variants, items of one spec are joined with '+': 'tome:r=8+int8'."""
    text = text.strip().lower()
    if text in RUNTIMES:
        return text
    return spec_to_string(parse_spec(text.replace("+", ",")))


def build_variant(model: nn.Module, variant: str, example: torch.Tensor, workdir: Path) -> nn.Module:
    """`model` (untouched) under `variant`. ONNX files go to `workdir` and are reused if already there."""
    if variant in RUNTIMES:
        from ..efficiency.onnx_export import OnnxModel, export_onnx, quantize_onnx_int8

        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "model.onnx"
        if not path.is_file():
            export_onnx(model, path)
        if variant == "onnx-int8":
            fp32, path = path, workdir / "model-int8.onnx"
            if not path.is_file():
                quantize_onnx_int8(fp32, path)
        return OnnxModel(path, model.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. bf16 without native support: the numbers speak
        return optimize(model, variant, example=example[:2])


def flop_variant(variant: str) -> str:
    """The float spec with the same arithmetic: FLOPs do not depend on precision or compilation."""
    if variant in RUNTIMES:
        return "none"
    return spec_to_string([item for item in parse_spec(variant) if item.name not in PRECISION_ITEMS])


class LogitsOnly(nn.Module):
    """A transformers model called like a vitkit one: images in, logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


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
