import pytest
import torch

import vitkit
from vitkit.efficiency.evit import default_prune_blocks


def test_default_blocks_follow_evit():
    assert default_prune_blocks(12) == [3, 6, 9]
    assert default_prune_blocks(4) == [1, 2, 3]


def test_evit_keeps_top_tokens_and_fuses_the_rest():
    model = vitkit.create_model("vit_pico_patch4_32").eval()  # 64 patches, 4 blocks
    fast = vitkit.optimize(model, "evit:keep=0.5:blocks=[1]")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = fast.forward_features(x)
        size = fast.token_state.size
    assert out.shape[1] == 1 + 32 + 1  # class, 32 kept, 1 fused
    assert size.flatten(1).tolist() == [[1.0] * 34] * 2  # the fused token is a new token of size 1
    assert fast.token_state.source is None
    # keep=1 changes nothing
    same = vitkit.optimize(model, "evit:keep=1.0")
    with torch.no_grad():
        assert torch.equal(same(x), model(x))


def test_evit_kept_tokens_are_the_most_attended():
    model = vitkit.create_model("vit_pico_patch4_32").eval()
    fast = vitkit.optimize(model, "evit:keep=0.25:blocks=[0]")
    probs = {}
    model.blocks[0].attn.on_attention = lambda p: probs.setdefault("p", p)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
    cls_attn = probs["p"].mean(dim=1)[0, 0, 1:]
    fast.token_state.trace_source = True
    with torch.no_grad():
        fast.forward_features(x)
    kept_sources = fast.token_state.source[0, 1:17, 1:]  # 16 kept tokens, each one original patch
    kept = set(kept_sources.argmax(dim=1).tolist())
    assert kept == set(cls_attn.topk(16).indices.tolist())


def test_evit_composes_with_tome():
    model = vitkit.create_model("vit_pico_patch4_32").eval()
    fast = vitkit.optimize(model, "evit:keep=0.7:blocks=[1],tome:r=4")
    with torch.no_grad():
        out = fast.forward_features(torch.randn(2, 3, 32, 32))
        size = fast.token_state.size
    # 65 -> 61 (merge 4) -> prune 60 patches to 42 + 1 fused = 44 -> 40 (merge) -> 36 -> 32
    assert out.shape[1] == 32
    assert (size.sum(dim=1) <= 65 - 18 + 1).all()  # 18 (possibly merged) tokens fused into one of size 1


def test_evit_bad_input():
    model = vitkit.create_model("vit_pico_patch4_32", class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="no class token"):
        vitkit.optimize(model, "evit:keep=0.5")
    with pytest.raises(ValueError, match="out of range"):
        vitkit.optimize(vitkit.create_model("vit_pico_patch4_32"), "evit:keep=0.5:blocks=[7]")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        vitkit.optimize(vitkit.create_model("vit_pico_patch4_32"), "evit:keep=1.5")
