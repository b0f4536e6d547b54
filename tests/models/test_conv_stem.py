"""A conv-stem ViT with dynamic_img_size: the token grid follows the input (each stride-2 stage rounds up) and the
position embedding is resampled to it; at the native size it is the fixed-size model."""

import pytest
import torch

import vitkit

STEM = {"conv_stem": [8, 16, 16], "conv_stem_strides": [1, 2, 2], "embed_dim": 32, "depth": 1, "num_heads": 2,
        "class_token": False, "global_pool": "avg"}


@pytest.mark.parametrize("size, grid", [(28, 7), (16, 4), (12, 3), (10, 3), (5, 2)])
def test_conv_stem_token_grid_follows_the_input(size, grid):
    torch.manual_seed(0)
    model = vitkit.create_model("vit_nano_convstem_28", num_classes=0, dynamic_img_size=True, **STEM).eval()
    x = torch.randn(2, 1, size, size)
    assert model.patch_grid(x) == (grid, grid)
    assert model.forward_features(x).shape == (2, grid * grid, 32)
    assert torch.isfinite(model(x)).all()


def test_conv_stem_dynamic_equals_fixed_at_the_native_size_and_fixed_refuses_others():
    torch.manual_seed(0)
    fixed = vitkit.create_model("vit_nano_convstem_28", num_classes=5, **STEM).eval()
    dynamic = vitkit.create_model("vit_nano_convstem_28", num_classes=5, dynamic_img_size=True, **STEM).eval()
    dynamic.load_state_dict(fixed.state_dict())
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(dynamic(x), fixed(x), rtol=0, atol=0)
    assert not torch.allclose(dynamic(x[..., :16, :16]).flatten(), torch.zeros(15))
    with pytest.raises(ValueError, match="expected input size 28x28, got 16x16"):
        fixed(x[..., :16, :16])
    assert dynamic.input_spec.fixed_size is False and fixed.input_spec.fixed_size is True
