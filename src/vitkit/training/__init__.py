"""Training: the DeiT recipe, exact resume, DDP through torchrun."""

from .config import TrainConfig, load_recipe, resolve_recipe
from .trainer import TrainingDiverged, train

__all__ = ["TrainConfig", "TrainingDiverged", "load_recipe", "resolve_recipe", "train"]
