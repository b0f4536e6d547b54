"""Building blocks shared by vitkit's models, one small module each."""

from .activations import ACT_LAYERS, QuickGELU
from .attention import Attention
from .attention_pool import AttentionPoolLatent
from .block import Block
from .class_attention import ClassAttn
from .conv_stem import ConvStem
from .drop_path import DropPath, drop_path
from .layer_scale import LayerScale
from .linear import apply_linear
from .mlp import GluMlp, Mlp, SwiGLUPacked
from .patch_embed import PatchEmbed
from .pooling import POOL_TYPES, pool_tokens
from .pos_embed import resample_abs_pos_embed

__all__ = [
    "ACT_LAYERS", "apply_linear", "Attention", "AttentionPoolLatent", "Block", "ClassAttn", "GluMlp", "QuickGELU",
    "SwiGLUPacked",
    "ConvStem", "DropPath", "drop_path", "LayerScale", "Mlp", "PatchEmbed",
    "POOL_TYPES", "pool_tokens", "resample_abs_pos_embed",
]
