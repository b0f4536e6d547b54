"""Keeping an inf or NaN image from changing the other images' predictions.

Dynamic int8 (PyTorch's and onnxruntime's) measures one activation range over the whole batch, so a
single non-finite image changes the quantization, and the logits, of every other image in its batch.
A float model keeps bad rows to themselves (only their logits become NaN); `run_finite_rows` restores
that: rows with any non-finite value are not run, their output rows are NaN, and the other rows'
outputs are exactly those of running those rows alone.
"""

from collections.abc import Callable

import torch
from torch import nn


def run_finite_rows(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    row_shape: Callable[[], tuple[int, ...]]) -> torch.Tensor:
    """`run(x)`, with the rows of `x` holding inf or NaN left out of the batch and NaN in the output.

    The all-finite batch costs one `isfinite().all()` check. `row_shape()` gives the shape of one output
    row; it is called only when no row is finite (nothing is run then)."""
    if torch.isfinite(x).all():
        return run(x)
    good = torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if good.any():
        out = run(x[good])
        full = out.new_full((len(x), *out.shape[1:]), float("nan"))
        full[good] = out
        return full
    return torch.full((len(x), *row_shape()), float("nan"), dtype=x.dtype, device=x.device)


class FiniteRows(nn.Module):
    """`inner` behind `run_finite_rows`: what `vitkit.optimize` returns for int8 models.

    A transparent wrapper: attributes not its own are read from, and plain attributes set on it go to,
    `inner` (`model.config`, `model.blocks`, `model.metadata = ...`). The check runs in eager mode only;
    under torch.compile, torch.export, ONNX export or tracing, `inner` runs as is."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.train(inner.training)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if (args or kwargs or torch.compiler.is_compiling() or torch.jit.is_tracing()
                or torch.onnx.is_in_onnx_export()):
            return self.inner(x, *args, **kwargs)
        return run_finite_rows(self.inner, x, lambda: output_row_shape(self.inner))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("inner")
            if inner is None:  # half-built (copy, unpickling): no inner to ask yet
                raise
            return getattr(inner, name)

    def __setattr__(self, name: str, value) -> None:
        inner = self.__dict__.get("_modules", {}).get("inner")
        if inner is None or name in ("inner", "training") or name.startswith("_"):
            super().__setattr__(name, value)
        else:
            setattr(inner, name, value)


def output_row_shape(model: nn.Module) -> tuple[int, ...]:
    """One output row of a vitkit classifier: its logits, or its features when it has no head."""
    width = getattr(model, "num_classes", None) or getattr(model, "num_features", None)
    if width is None:
        raise ValueError(f"cannot tell the output size of {type(model).__name__} without running it")
    return (width,)


def unwrap(model: nn.Module) -> nn.Module:
    return model.inner if isinstance(model, FiniteRows) else model
