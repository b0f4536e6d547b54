"""Training objectives: what a run optimises around a backbone (see base.py). `vitkit train` runs the
supervised one; `vitkit pretrain --objective NAME` the self-supervised ones."""

from .base import Objective, slice_views, to_device
from .supervised import Supervised

__all__ = ["Objective", "Supervised", "slice_views", "to_device"]
