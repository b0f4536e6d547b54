"""Training checkpoints: written atomically, the last K kept, found again on --resume."""

import os
import re
import warnings
from pathlib import Path

import torch

from ..weights import atomic_write

_STEP_FILE = re.compile(r"step-(\d+)\.pt$")
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step_in_epoch", "global_step", "torch_rng")


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
    """A training checkpoint: the file given, or the newest readable one in a run or checkpoints
    directory (an unreadable newest file, e.g. cut short by a full disk, falls back to the one before,
    with a warning).

    Loaded with `weights_only=True`: a checkpoint holds tensors, numbers, strings and containers only,
    so a planted or shared file cannot run code."""
    path = Path(path)
    if not path.is_dir():
        return _read(path)
    candidates = CheckpointManager(path if path.name == "checkpoints" else path / "checkpoints").checkpoints()
    if not candidates:
        raise FileNotFoundError(f"no training checkpoint (checkpoints/step-*.pt) under {path} to resume from")
    for newer, candidate in zip([None, *candidates[::-1]], candidates[::-1], strict=False):
        try:
            state = _read(candidate)
        except ValueError as err:
            warnings.warn(f"skipping it: {err}", stacklevel=2)
            continue
        if newer is not None:
            warnings.warn(f"resuming from {candidate.name}, the newest readable checkpoint", stacklevel=2)
        return state
    raise ValueError(f"none of the {len(candidates)} training checkpoints under {path} is readable "
                     f"(newest: {candidates[-1]}); start over with --overwrite")


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except RecursionError:
        raise ValueError(f"{path} is not a vitkit training checkpoint: nested too deeply to be one") from None
    except Exception as err:  # torch raises many types for damaged zips, refused globals and bad pickles
        raise ValueError(f"{path} is not a readable vitkit training checkpoint: {_first_line(err)}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a vitkit training checkpoint: it lacks {', '.join(missing)}")
    model = state["model"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise ValueError(f"{path} is not a vitkit training checkpoint: its 'model' entry is not a dict of tensors")
    bad = [k for k in ("epoch", "step_in_epoch", "global_step") if type(state[k]) is not int or state[k] < 0]
    if bad or not isinstance(state["optimizer"], dict) or not isinstance(state["scheduler"], dict):
        raise ValueError(f"{path} is not a vitkit training checkpoint: malformed "
                         f"{', '.join(bad) or 'optimizer or scheduler state'}")
    return state


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
