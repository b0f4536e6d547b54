import pytest
import torch

import vitkit
from vitkit.models.swin.model import window_partition


def test_capture_keeps_fused_output_and_gives_probabilities():
    model = vitkit.create_model("vit_pico_patch4_32", reg_tokens=2).eval()
    x = torch.randn(2, 3, 32, 32)
    plain = model(x)
    with vitkit.capture_attention(model) as maps:
        captured = model(x)
    assert torch.equal(plain, captured)
    assert len(maps) == model.config.depth
    n = 64 + model.num_prefix_tokens
    assert all(m.shape == (2, model.config.num_heads, n, n) for m in maps)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, model.config.num_heads, n), atol=1e-5)
    # hooks are gone after the block
    model(x)
    assert len(maps) == model.config.depth


def test_captured_probabilities_reproduce_the_block_output():
    model = vitkit.create_model("vit_pico_patch4_32").eval()
    attn = model.blocks[0].attn
    tokens = model.embed(torch.randn(1, 3, 32, 32))
    h = model.blocks[0].norm1(tokens)
    with vitkit.capture_attention(model) as maps:
        fused = attn(h)
    _, _, v = attn.project_qkv(h)
    manual = (maps[0] @ v).transpose(1, 2).reshape(1, -1, attn.num_heads * attn.head_dim)
    assert torch.allclose(attn.proj(manual), fused, atol=1e-5)


def test_rollout_rows_are_distributions():
    model = vitkit.create_model("vit_pico_patch4_32").eval()
    with vitkit.capture_attention(model) as maps:
        model(torch.randn(2, 3, 32, 32))
    rollout = vitkit.attention_rollout(maps)
    assert rollout.shape == (2, 65, 65)
    assert torch.allclose(rollout.sum(-1), torch.ones(2, 65), atol=1e-5)
    with pytest.raises(ValueError, match="head_fusion"):
        vitkit.attention_rollout(maps, head_fusion="median")


SWIN = dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), num_classes=5)


def test_swin_maps_are_per_window_and_match_a_manual_recomputation():
    """(B, num_windows, heads, N, N), N = window**2, rows summing to 1; an unshifted block's maps equal
    softmax(q k^T * scale + relative position bias) recomputed by hand; outputs unchanged."""
    model = vitkit.create_model("swin_tiny_patch4_window7_224", **SWIN).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        with vitkit.capture_attention(model) as maps:
            captured = model(x)
    assert torch.equal(plain, captured) and len(maps) == 4
    assert [tuple(m.shape) for m in maps] == [(2, 16, 2, 16, 16)] * 2 + [(2, 4, 4, 16, 16)] * 2
    assert all(torch.allclose(m.sum(-1), torch.ones(m.shape[:-1]), atol=1e-5) for m in maps)
    block = model.layers[0].blocks[0]
    assert block.shift == 0 and model.layers[0].blocks[1].shift == 2
    with torch.no_grad():
        windows = window_partition(block.norm1(model.patch_embed(x)), block.window)  # (B * 16, 16, C)
        attn = block.attn
        q, k, _ = attn.qkv(windows).reshape(32, 16, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        head_dim = q.shape[-1]
        manual = (q @ k.transpose(-2, -1) * head_dim**-0.5 + attn.relative_position_bias()).softmax(-1)
    torch.testing.assert_close(maps[0], manual.view(2, 16, 2, 16, 16), atol=1e-5, rtol=0)


def test_rollout_refuses_swin_window_maps():
    model = vitkit.create_model("swin_tiny_patch4_window7_224", **SWIN).eval()
    with torch.no_grad(), vitkit.capture_attention(model) as maps:
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"5-d \(B, windows, heads, N, N\) per-window maps \(Swin\)"):
        vitkit.attention_rollout(maps)


def test_convnext_has_no_attention_and_is_pointed_to_grad_cam():
    model = vitkit.create_model("convnext_atto", num_classes=4)
    with pytest.raises(ValueError, match=r"ConvNeXt has no attention modules.*Grad-CAM.*forward_intermediates.*"
                                         r"stages\.3.*explanations\.grad_cam"):
        with vitkit.capture_attention(model):
            pass
