"""vitkit: vision transformers you can build, load from timm / Hugging Face, train, speed up and measure."""

from ._version import __version__
from .api import load
from .efficiency import optimize, parse_spec
from .evaluation import attention_rollout, capture_attention, count_flops, count_params
from .models import list_models
from .weights import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    create_model,
    from_timm,
    load_checkpoint,
    save,
)

__all__ = [
    "CheckpointMismatchError", "CorruptCheckpointError", "attention_rollout", "capture_attention",
    "count_flops", "count_params", "create_model", "from_timm", "list_models", "load", "load_checkpoint",
    "optimize", "parse_spec", "save", "__version__",
]
