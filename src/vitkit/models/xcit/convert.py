"""Other XCiT checkpoint layouts -> timm's key names (this model's).

The original release (facebookresearch/xcit, `xcit_nano_12_p16_224.pth`, ...) differs from timm in three
ways, which timm's `checkpoint_filter_fn` undoes and so does `from_original`: the weights sit inside a
`{"model": ...}` dict (sometimes with DistributedDataParallel's `module.` prefix), the positional encoding
is called `pos_embeder`, and each class-attention block has one packed `attn.qkv` projection where timm
(and vitkit) keep `attn.q`, `attn.k`, `attn.v` (only the class token's query is computed). There is no
transformers XCiT, so no Hugging Face converter.
"""

import torch


def from_original(state_dict: dict, use_pos_embed: bool = True) -> dict[str, torch.Tensor]:
    """The state dict in timm's layout (a timm state dict comes back as it was, as a new dict). With
    `use_pos_embed=False` the positional-encoding weights are dropped, as timm does."""
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith(("pos_embeder.", "pos_embed.")):
            if not use_pos_embed:
                continue
            key = "pos_embed." + key.split(".", 1)[1]
        if key.startswith("cls_attn_blocks.") and key.endswith((".attn.qkv.weight", ".attn.qkv.bias")):
            prefix, kind = key.rsplit(".qkv.", 1)
            for name, part in zip("qkv", value.reshape(3, -1, *value.shape[1:]).unbind(0), strict=True):
                out[f"{prefix}.{name}.{kind}"] = part.clone()
            continue
        out[key] = value
    return out
