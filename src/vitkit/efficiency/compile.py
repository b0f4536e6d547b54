"""torch.compile, or the eager model with a clear message when no compiler works here."""

import warnings

import torch
from torch import nn


def compile_model(model: nn.Module, example: torch.Tensor, mode: str = "default") -> nn.Module:
    """Compile and run `example` once, so a missing compiler shows up now rather than mid-evaluation.

    Only that first compilation is guarded: a later recompilation (a new input shape) that fails
    raises as torch.compile does.
    """
    try:
        compiled = torch.compile(model, mode=mode)
        with torch.no_grad():
            compiled(example)
        return compiled
    except Exception as err:  # noqa: BLE001 - any compiler failure means: fall back to eager
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        warnings.warn(f"torch.compile failed here ({type(err).__name__}: {reason}); using the eager model",
                      stacklevel=3)
        torch._dynamo.reset()
        return model
