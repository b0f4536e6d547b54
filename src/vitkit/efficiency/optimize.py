"""`optimize(model, "tome:r=8,bf16")`: one entry point for every speed-up, on a copy of the model."""

import copy

import torch
from torch import nn

from ..models._protocol import input_spec_of
from .adapters import token_adapter
from .compile import compile_model
from .finite_rows import FiniteRows
from .precision import quantize_int8, to_bf16
from .reducer import apply_evit, apply_tome
from .spec import SpecItem, parse_spec

# Token reduction changes the graph, precision changes the weights, compile sees the final model.
ORDER = ("evit", "tome", "int8", "bf16", "compile")


def optimize(model: nn.Module, spec: "str | list[SpecItem] | None", example: torch.Tensor | None = None) -> nn.Module:
    """A copy of `model` with the spec applied; the original is untouched.

    `example` (one input batch) is used only by `compile`, to compile now; by default it is a batch of
    two random images of the model's input size.

    Bad rows stay bad alone: int8 quantizes activations with one range measured over the whole batch,
    so one inf or NaN image would change the logits of every other image in its batch. A model with
    int8 in its spec is therefore returned inside a `FiniteRows` wrapper (`efficiency/finite_rows.py`):
    rows with any non-finite value are not run, their logits are NaN, and the other rows' logits are
    exactly those of running those rows alone; a batch with no finite row gives all-NaN logits without
    running. An all-finite batch costs one `isfinite().all()` check. The wrapper is transparent to
    attribute access (`model.config`, `model.blocks`, `model.metadata = ...`), skips its check under
    torch.compile and export, and is unwrapped again when the model is optimized further. The other
    spec items compute each row on its own, like the float model, and come back unwrapped.
    """
    items = parse_spec(spec)
    wrapped = isinstance(model, FiniteRows)
    if wrapped:  # optimize the model inside, then wrap the result again
        model = model.inner
    check_model_takes(model, items)
    model = copy.deepcopy(model)
    for item in sorted(items, key=lambda i: ORDER.index(i.name)):
        p = item.params
        if item.name == "tome":
            apply_tome(model, p["r"], p["schedule"], p["prop_attn"], p["trace_source"])
        elif item.name == "evit":
            apply_evit(model, p["keep"], p["blocks"])
        elif item.name == "int8":
            model = quantize_int8(model.eval(), p["skip"], p["head"])
        elif item.name == "bf16":
            model = to_bf16(model.eval())
        elif item.name == "compile":
            model = compile_model(model.eval(), example if example is not None else example_input(model), p["mode"])
    if wrapped or any(item.name == "int8" for item in items):
        model = FiniteRows(model)  # outermost, so that torch.compile never sees the check
    return model


def check_model_takes(model: nn.Module, items: list[SpecItem]) -> None:
    """Refuse, with the reason, a spec item this kind of model cannot take."""
    token_items = [i.name for i in items if i.name in ("tome", "evit")]
    if token_items:
        token_adapter(model, "/".join(token_items))  # models without a token-sequence adapter are refused


def example_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """Random images of the size and channels the model's input spec declares, on its device."""
    spec = input_spec_of(model)
    return torch.randn(batch, spec.in_chans, *spec.img_size, device=next(model.parameters()).device)


def load_optimized(directory, strict: bool = True, optimized: bool = True, **overrides) -> nn.Module:
    """`vitkit.load`: the weights package's `load` (the float model a directory describes) plus the optimize
    spec a `vitkit optimize` directory records, applied unless `optimized=False`."""
    from ..weights import load as load_float

    model = load_float(directory, strict=strict, **overrides)
    spec = (model.metadata or {}).get("optimize")
    if spec and optimized:
        name, metadata, cfg = model.model_name, model.metadata, getattr(model, "pretrained_cfg", {})
        model = optimize(model.eval(), spec)
        model.model_name, model.metadata, model.pretrained_cfg = name, metadata, cfg
    return model
