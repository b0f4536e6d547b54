"""vitkit MetaFormer -> the equal transformers `PoolFormerForImageClassification` (the bench's transformers
peer), the reverse of convert.py. Only PoolFormer V1 with Hugging Face's head order has one."""

import re

import torch

from .configs import MetaFormerConfig

_BLOCK = "encoder.block.{}.{}."
_NAMES = [
    ("stages.{}.blocks.{}.norm1.", _BLOCK + "before_norm."),
    ("stages.{}.blocks.{}.norm2.", _BLOCK + "after_norm."),
    ("stages.{}.blocks.{}.mlp.fc1.", _BLOCK + "output.conv1."),
    ("stages.{}.blocks.{}.mlp.fc2.", _BLOCK + "output.conv2."),
    ("stages.{}.blocks.{}.layer_scale1.scale", _BLOCK + "layer_scale_1"),
    ("stages.{}.blocks.{}.layer_scale2.scale", _BLOCK + "layer_scale_2"),
    ("stages.{}.downsample.conv.", "encoder.patch_embeddings.{}.projection."),
]
_PATTERNS = [(re.compile("^" + r"(\d+)".join(re.escape(p) for p in ours.split("{}"))), hf) for ours, hf in _NAMES]


def hf_config_from(config) -> dict:
    """The Hugging Face PoolFormer config equal to a vitkit MetaFormer, or a ValueError naming what differs."""
    c = config
    if not isinstance(c, MetaFormerConfig):
        raise ValueError(f"no transformers PoolFormer equals a {type(c).__name__} model")
    ls = set(c.layer_scale_init_values)
    unsupported = [name for name, differs in [
        (f"token_mixers={c.token_mixers}", set(c.token_mixers) != {"pooling"}),
        (f"mlp_act={c.mlp_act!r}", c.mlp_act != "gelu"),
        ("mlp_bias=False", not c.mlp_bias),
        (f"downsample_norm={c.downsample_norm!r}", c.downsample_norm is not None),
        (f"norm_layers={c.norm_layers}", set(c.norm_layers) != {"groupnorm1"}),
        (f"output_norm={c.output_norm!r}", c.output_norm != "groupnorm1"),
        ("norm_before_pool=False (timm's head order)", not c.norm_before_pool),
        (f"res_scale_init_values={c.res_scale_init_values}", set(c.res_scale_init_values) != {None}),
        (f"layer_scale_init_values={c.layer_scale_init_values}", len(ls) != 1),
        ("use_mlp_head=True", c.use_mlp_head and c.num_classes > 0),
        (f"global_pool={c.global_pool!r}", c.global_pool != "avg"),
        (f"dims={c.dims} (a repeated width)", any(a == b for a, b in zip(c.dims, c.dims[1:], strict=False))),
    ] if differs]
    if unsupported:
        raise ValueError(f"no transformers PoolFormer equals this model: it has {', '.join(unsupported)}")
    (scale,) = ls
    stages = len(c.depths)
    return {
        "model_type": "poolformer", "architectures": ["PoolFormerForImageClassification"],
        "num_channels": c.in_chans, "depths": list(c.depths), "hidden_sizes": list(c.dims),
        "num_encoder_blocks": stages, "patch_sizes": [7] + [3] * (stages - 1), "strides": [4] + [2] * (stages - 1),
        "padding": [2] + [1] * (stages - 1), "pool_size": c.pool_size, "mlp_ratio": 4.0, "hidden_act": "gelu",
        "use_layer_scale": scale is not None, "layer_scale_init_value": scale if scale is not None else 1e-5,
        "drop_path_rate": c.drop_path_rate, "id2label": {str(i): str(i) for i in range(c.num_classes)},
    }


def hf_state_dict_from(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vitkit (= timm) names to the names transformers saves; the inverse of `convert.convert_state_dict`."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("head.fc."):
            out["classifier." + key.removeprefix("head.fc.")] = value
        elif key.startswith("head.norm."):
            out["norm." + key.removeprefix("head.norm.")] = value
        elif key.startswith("stem.conv."):
            out["poolformer.encoder.patch_embeddings.0.projection." + key.removeprefix("stem.conv.")] = value
        else:
            found = next(((m, hf) for pattern, hf in _PATTERNS if (m := pattern.match(key))), None)
            if found is None:
                raise ValueError(f"vitkit MetaFormer tensor {key!r} has no transformers equal")
            m, hf = found
            out["poolformer." + hf.format(*m.groups()) + key[m.end():]] = value
    return out


def transformers_peer(config):
    """(transformers class name, HF config dict, state-dict converter) of the transformers PoolFormer equal to
    `config`. transformers' PoolFormer always has the classifier's norm, so a model without classes maps to
    `PoolFormerForImageClassification` with num_labels 0 (an identity classifier)."""
    hf = hf_config_from(config)
    return hf["architectures"][0], hf, hf_state_dict_from
