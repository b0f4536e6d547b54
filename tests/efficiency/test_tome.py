import copy
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.efficiency import reduces_tokens
from vitkit.efficiency.tome import bipartite_soft_matching, merge_schedule
from vitkit.layers.block import Block

TOME_FIXTURES = ["tome_vit_p4_32_r8", "tome_vit_p4_32_r20", "tome_deit_distilled_p4_32_r8", "tome_vit_p7_28_gray_r3"]


def timm_model(fixtures_dir, weights_name):
    meta = json.loads((fixtures_dir / "timm" / f"{weights_name}.json").read_text())
    tensors = load_file(fixtures_dir / "timm" / f"{weights_name}.safetensors")
    state_dict = {k: v for k, v in tensors.items() if not k.startswith("__")}
    return vitkit.from_timm(meta["timm_class"], meta["kwargs"], state_dict).eval()


@pytest.mark.parametrize("name", TOME_FIXTURES)
def test_tome_reproduces_reference_implementation(fixtures_dir, name):
    meta = json.loads((fixtures_dir / "tome" / f"{name}.json").read_text())
    ref = load_file(fixtures_dir / "tome" / f"{name}.safetensors")
    model = timm_model(fixtures_dir, meta["weights"].split("/")[-1].removesuffix(".safetensors"))
    model = vitkit.optimize(model, f"tome:r={meta['r']}:trace_source=true")
    with torch.no_grad():
        features = model.forward_features(ref["__input__"])
        size, source = model.token_state.size, model.token_state.source
        logits = model.forward_head(features)
    assert features.shape[1] == meta["tokens_out"]
    torch.testing.assert_close(logits, ref["__logits__"], atol=1e-4, rtol=0)
    torch.testing.assert_close(features, ref["__features__"], atol=1e-4, rtol=0)
    assert torch.equal(size, ref["__size__"])
    assert torch.equal(source, ref["__source__"])


def test_r0_is_exactly_the_baseline():
    model = vitkit.create_model("vit_pico_patch4_32").eval()
    x = torch.randn(3, 3, 32, 32)
    merged = vitkit.optimize(model, "tome:r=0")
    with torch.no_grad():
        assert torch.equal(merged(x), model(x))


def test_optimize_leaves_the_original_untouched():
    model = vitkit.create_model("vit_pico_patch4_32").eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        fast = vitkit.optimize(model, "tome:r=8")
        assert fast(x).shape == ref.shape
        assert torch.equal(model(x), ref)
    assert not reduces_tokens(model) and all(type(b) is Block for b in model.blocks)  # no block swapped
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_prefix_tokens_are_never_merged_and_stay_first():
    model = vitkit.create_model("vit_pico_patch4_32", reg_tokens=4, distilled=True).eval()
    x = torch.randn(2, 3, 32, 32)
    fast = vitkit.optimize(model, "tome:r=8:trace_source=true")
    with torch.no_grad():
        out = fast.forward_features(x)
    prefix = model.num_prefix_tokens
    source, size = fast.token_state.source, fast.token_state.size
    assert out.shape[1] == prefix + 64 - 4 * 8
    assert torch.equal(source[:, :prefix, :prefix], torch.eye(prefix).expand(2, -1, -1))  # each holds itself
    assert source[:, prefix:, :prefix].sum() == 0  # no patch token absorbed a prefix token
    assert torch.equal(size[:, :prefix], torch.ones(2, prefix, 1))
    assert size.sum(dim=1).flatten().tolist() == [prefix + 64.0] * 2  # sizes account for every original token


def test_too_large_r_is_clamped_with_a_warning_and_never_empties_patches():
    model = vitkit.create_model("vit_pico_patch4_28").eval()  # 49 patches, 4 blocks
    with pytest.warns(UserWarning, match="clamped to r="):
        fast = vitkit.optimize(model, "tome:r=1000")
    with torch.no_grad():
        out = fast.forward_features(torch.randn(2, 1, 28, 28))
    assert out.shape[1] - model.num_prefix_tokens >= 1
    assert torch.isfinite(out).all()


def test_schedules():
    assert merge_schedule(4, 8) == [8, 8, 8, 8]
    assert merge_schedule(4, [4, 2]) == [4, 2, 0, 0]
    decreasing = merge_schedule(12, 8, "decreasing")
    assert decreasing[0] == 12 and decreasing == sorted(decreasing, reverse=True) and decreasing[-1] in (3, 4)
    with pytest.raises(ValueError, match="4 blocks"):
        merge_schedule(4, [1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="constant or 'decreasing'|'constant' or 'decreasing'"):
        merge_schedule(4, 2, "sideways")


def test_matching_merges_most_similar_pairs_first():
    # tokens: protected class token, then A/B alternating; A1 is nearly B1, A2 points elsewhere
    metric = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 1, 0.01], [0, 0, 1], [1, 0, 0.2]]])
    merge = bipartite_soft_matching(metric, 1, protected=1)
    x = torch.arange(5.0).reshape(1, 5, 1)
    merged = merge(x, "mean")
    # A = [cls, t2, t4], B = [t1, t3]; t2 is closest to t1, so t1 <- mean(t1, t2); t4 stays
    assert merged.flatten().tolist() == [0.0, 4.0, 1.5, 3.0]


def test_tome_trains_gradients_flow_through_merges():
    model = vitkit.optimize(vitkit.create_model("vit_pico_patch4_28"), "tome:r=8").train()
    loss = model(torch.randn(4, 1, 28, 28)).logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_proportional_attention_uses_sdpa_mask_not_explicit_softmax(monkeypatch):
    model = vitkit.optimize(vitkit.create_model("vit_pico_patch4_32").eval(), "tome:r=8")
    masks = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 3, 32, 32))
    assert masks[0] is None  # nothing merged yet
    assert all(m is not None and m.shape == (2, 1, 1, k) for m, k in zip(masks[1:], (57, 49, 41), strict=True))


def test_deepcopy_of_an_optimized_model_has_its_own_token_state():
    fast = vitkit.optimize(vitkit.create_model("vit_pico_patch4_32").eval(), "tome:r=8")
    twin = copy.deepcopy(fast)
    assert twin.token_state is not fast.token_state
    assert twin.blocks[0].token_reducer.state is twin.token_state
    with torch.no_grad():
        torch.testing.assert_close(twin(torch.ones(1, 3, 32, 32)), fast(torch.ones(1, 3, 32, 32)))


def test_merge_map_png(tmp_path):
    from PIL import Image

    from vitkit.efficiency.merge_map import save_merge_map, token_groups

    fast = vitkit.optimize(vitkit.create_model("vit_pico_patch4_28").eval(), "tome:r=8")
    image = torch.rand(1, 28, 28)
    groups = token_groups(fast, image)
    assert groups.shape == (7, 7)
    assert len(set(groups.flatten().tolist())) == 49 - 4 * 8  # 17 tokens left hold the 49 patches
    path = tmp_path / "merged.png"
    save_merge_map(fast, image, (image[0] * 255).byte().numpy(), path)
    with Image.open(path) as png:
        assert png.size == (224, 224) and png.mode == "RGB"
    with pytest.raises(ValueError, match="optimized with tome"):
        token_groups(vitkit.create_model("vit_pico_patch4_28"), image)


def test_nchw_intermediates_refuse_reduced_tokens():
    fast = vitkit.optimize(vitkit.create_model("vit_pico_patch4_32").eval(), "tome:r=4")
    with pytest.raises(ValueError, match="output_fmt='NLC'"):
        fast.forward_intermediates(torch.randn(1, 3, 32, 32))
    _, inter = fast.forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt="NLC")
    assert [t.shape[1] for t in inter] == [60, 56, 52, 48]
