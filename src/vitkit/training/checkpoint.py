"""Training checkpoints: written atomically, the last K kept, found again on --resume."""

import os
import re
from pathlib import Path

import torch

from ..weights import atomic_write

_STEP_FILE = re.compile(r"step-(\d+)\.pt$")


class CheckpointManager:
    def __init__(self, directory: str | os.PathLike, keep_last: int = 2):
        self.directory = Path(directory)
        self.keep_last = keep_last

    def save(self, state: dict, global_step: int) -> Path:
        path = self.directory / f"step-{global_step:08d}.pt"
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        for old in self.checkpoints()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def checkpoints(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted((p for p in self.directory.iterdir() if _STEP_FILE.search(p.name)),
                      key=lambda p: int(_STEP_FILE.search(p.name)[1]))

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None


def load_training_state(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        latest = CheckpointManager(path if path.name == "checkpoints" else path / "checkpoints").latest()
        if latest is None:
            raise FileNotFoundError(f"no training checkpoint (checkpoints/step-*.pt) under {path} to resume from")
        path = latest
    try:
        # Our own files: they hold optimizer state and python RNG state, which weights_only cannot.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"{path} is not a readable vitkit training checkpoint: {err}") from err
