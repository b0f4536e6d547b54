"""`optimize(model, "tome:r=8,bf16")`: one entry point for every speed-up, on a copy of the model."""

import copy

import torch
from torch import nn

from .compile import compile_model
from .precision import quantize_int8, to_bf16
from .reducer import apply_evit, apply_tome, is_plain_vit
from .spec import SpecItem, parse_spec

# Token reduction changes the graph, precision changes the weights, compile sees the final model.
ORDER = ("evit", "tome", "int8", "bf16", "compile")


def optimize(model: nn.Module, spec: "str | list[SpecItem] | None", example: torch.Tensor | None = None) -> nn.Module:
    """A copy of `model` with the spec applied; the original is untouched.

    `example` (one input batch) is used only by `compile`, to compile now; by default it is a batch of
    two random images of the model's input size.
    """
    items = parse_spec(spec)
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
    return model


def check_model_takes(model: nn.Module, items: list[SpecItem]) -> None:
    """Refuse, with the reason, a spec item this kind of model cannot take."""
    token_items = [i.name for i in items if i.name in ("tome", "evit")]
    if token_items and not is_plain_vit(model):
        raise ValueError(
            f"{'/'.join(token_items)} needs a plain ViT whose blocks all see one token sequence; "
            f"{type(model).__name__} is not one (hierarchical models change the token grid between stages)"
        )
    if any(i.name in ("int8", "evit", "tome") for i in items) and not hasattr(model, "blocks"):
        raise ValueError(f"{type(model).__name__} has no transformer blocks to optimize")


def example_input(model: nn.Module) -> torch.Tensor:
    config = model.config
    param = next(model.parameters())
    return torch.randn(2, config.in_chans, config.img_size, config.img_size, device=param.device)
