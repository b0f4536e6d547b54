"""Making trained ViTs faster: token merging (ToMe), token pruning (EViT), bf16, int8, torch.compile,
ONNX. `optimize(model, spec)` is the one entry point; see `spec.py` for the spec syntax."""

from .optimize import optimize
from .reducer import apply_evit, apply_tome, reduces_tokens
from .spec import SPEC_ITEMS, SpecItem, parse_spec, spec_to_string

__all__ = [
    "optimize", "apply_evit", "apply_tome", "reduces_tokens", "SPEC_ITEMS", "SpecItem", "parse_spec",
    "spec_to_string",
]
