"""How token reduction reaches one model family: one small adapter per family, looked up by model class.

The algorithms (`tome.py`, `evit.py`, `reducer.BlockReducer`) are pure functions of token tensors and
know no model. An adapter knows one family's blocks: it installs a `BlockReducer` between a block's
attention and its MLP, keeps the `TokenState` every pass starts fresh with, and reports the few facts
the algorithms need (depth, token count, prefix tokens, class token, patch grid). The shared layers
(`vitkit.layers.Block`) and the model sources know nothing of token reduction, as in ToMe's split
between `merge.py` and one `patch/<family>.py` per model family.

Only models that run one token sequence through all their blocks can take an adapter: ViT, DeiT, DINOv2,
CLIP, SigLIP (all `vitkit.models.VisionTransformer`), BEiT and CCT, each through `swap.BlockSwapAdapter`.
Hierarchical models (ConvNeXt, Swin, PVTv2, MetaFormer, EfficientFormer) have none, and `token_adapter`
refuses them with the reason; so do CaiT and XCiT (the model class says why: `token_reduction_refusal`).
"""

import importlib

from torch import nn

from ..token_state import TokenState

TOKEN_SEQUENCE_MODELS = "ViT, DeiT, DINOv2, CLIP, SigLIP, BEiT, CCT"
_BUILTIN = ("vit", "beit", "cct")  # modules of this package that register an adapter when imported


class TokenAdapter:
    """One model family's side of token reduction. Subclasses implement every method."""

    def state(self, model: nn.Module) -> TokenState | None:
        """The model's token state, or None while nothing is installed."""
        raise NotImplementedError

    def install(self, model: nn.Module) -> TokenState:
        """Create the token state (idempotent) and make every forward pass start it afresh."""
        raise NotImplementedError

    def reducers(self, model: nn.Module) -> list:
        """Each block's `BlockReducer`, or None for a block that reduces nothing."""
        raise NotImplementedError

    def reducer(self, model: nn.Module, index: int):
        """Block `index`'s `BlockReducer`, installed on first use."""
        raise NotImplementedError

    def num_tokens(self, model: nn.Module) -> int:
        """Tokens the first block sees at the model's input size, prefix tokens included."""
        raise NotImplementedError

    def num_prefix_tokens(self, model: nn.Module) -> int:
        """Class, distillation and register tokens: first in the sequence, never reduced."""
        raise NotImplementedError

    def has_class_token(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def patch_grid(self, model: nn.Module) -> tuple[int, int]:
        """(rows, columns) of patch tokens at the model's input size."""
        raise NotImplementedError


class NoTokenAdapterError(TypeError, ValueError):
    """The model is not a token-sequence model (a TypeError; a ValueError too, as spec checks raise)."""


_ADAPTERS: dict[type, TokenAdapter] = {}
_builtin_loaded = False


def register_token_adapter(model_cls: type, adapter: TokenAdapter) -> None:
    """Let token reduction work on `model_cls` (and its subclasses) through `adapter`."""
    if not isinstance(model_cls, type):
        raise TypeError(f"register_token_adapter needs a model class, got {model_cls!r}")
    _ADAPTERS[model_cls] = adapter


def find_token_adapter(model: nn.Module) -> TokenAdapter | None:
    """The adapter for `model`'s class (the nearest registered base class), or None."""
    _load_builtin()
    for cls in type(model).__mro__:
        adapter = _ADAPTERS.get(cls)
        if adapter is not None:
            return adapter
    return None


def token_adapter(model: nn.Module, what: str = "token reduction") -> TokenAdapter:
    """The adapter for `model`, or a one-line error that names the model and what is needed."""
    adapter = find_token_adapter(model)
    if adapter is None:
        raise NoTokenAdapterError(refusal(model, what))
    return adapter


def refusal(model: nn.Module, what: str) -> str:
    name = type(model).__name__
    strides = sorted({f.reduction for f in getattr(model, "feature_info", None) or () if hasattr(f, "reduction")})
    declared = getattr(model, "token_reduction_refusal", None)  # a model class may say why itself
    if declared:
        why = declared
    elif len(strides) > 1:
        why = f"it has stages of feature maps (strides {', '.join(map(str, strides))}), not one token sequence"
    else:
        why = "no token adapter is registered for it (vitkit.efficiency.adapters.register_token_adapter)"
    return (f"{what} needs a model whose blocks all see one token sequence; {name} is not one: {why}; "
            f"token-sequence models: {TOKEN_SEQUENCE_MODELS}")


def _load_builtin() -> None:
    # Lazily, so that importing vitkit.efficiency does not import the model families.
    global _builtin_loaded
    if not _builtin_loaded:
        for name in _BUILTIN:
            importlib.import_module(f"{__name__}.{name}")
        _builtin_loaded = True


__all__ = [
    "NoTokenAdapterError", "TOKEN_SEQUENCE_MODELS", "TokenAdapter", "find_token_adapter", "refusal",
    "register_token_adapter", "token_adapter",
]
