"""Measuring models: cost (params, FLOPs) and what they attend to."""

from .attention_maps import attention_rollout, capture_attention
from .flops import count_flops, count_params

__all__ = ["attention_rollout", "capture_attention", "count_flops", "count_params"]
