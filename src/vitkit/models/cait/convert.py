"""Other CaiT checkpoint layouts -> timm's key names (this model's).

The original release (facebookresearch/deit, `XXS24_224.pth`, ...) has timm's names already, inside a
`{"model": ...}` dict and sometimes with DistributedDataParallel's `module.` prefix; timm's
`checkpoint_filter_fn` undoes both, and so does `from_original`. There is no transformers CaiT, so no
Hugging Face converter.
"""

import torch


def from_original(state_dict: dict) -> dict[str, torch.Tensor]:
    """The state dict without the `{"model": ...}` wrapper and `module.` prefixes (a timm state dict comes
    back as it was, as a new dict)."""
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    return {k.replace("module.", ""): v for k, v in state_dict.items()}
