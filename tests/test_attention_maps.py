import pytest
import torch

import vitkit


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
