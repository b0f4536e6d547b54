"""Weights in and out: vitkit's format, timm checkpoints and Hugging Face directories."""

from .io import CorruptCheckpointError, atomic_write, atomic_write_text, read_state_dict, save_safetensors
from .loading import (
    CheckpointMismatchError,
    create_model,
    load,
    load_checkpoint,
    load_state_dict,
    read_checkpoint,
    save,
)
from .timm import config_from_timm, from_timm

__all__ = [
    "CorruptCheckpointError", "CheckpointMismatchError", "atomic_write", "atomic_write_text", "config_from_timm",
    "create_model", "from_timm", "load", "load_checkpoint", "load_state_dict", "read_checkpoint", "read_state_dict",
    "save", "save_safetensors",
]
