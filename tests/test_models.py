import json

import pytest
import torch

import vitkit
from vitkit.models import ViTConfig, config_from_dict, config_to_dict

TINY = dict(embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize(
    "name, params",
    [("vit_tiny_patch16_224", 5_717_416), ("vit_small_patch16_224", 22_050_664), ("vit_base_patch16_224", 86_567_656)],
)
def test_parameter_counts_match_published(name, params):
    with torch.device("meta"):
        model = vitkit.create_model(name)
    assert vitkit.count_params(model) == params


def test_registry_has_named_configs():
    names = vitkit.list_models()
    for size in ("tiny", "small", "base", "large"):
        assert f"vit_{size}_patch16_224" in names
    for size in ("tiny", "small", "base"):
        assert f"deit_{size}_distilled_patch16_224" in names
    assert "vit_tiny_patch4_28" in names and "vit_tiny_patch4_32" in names
    assert vitkit.list_models("deit_*_distilled_patch16_224") == [
        "deit_base_distilled_patch16_224", "deit_small_distilled_patch16_224", "deit_tiny_distilled_patch16_224"
    ]


def test_unknown_model_names_closest():
    with pytest.raises(ValueError, match=r"unknown model 'vit_smal_patch16_224'.*closest: vit_small_patch16_224"):
        vitkit.create_model("vit_smal_patch16_224")


def test_unknown_override_is_named_with_valid_ones():
    with pytest.raises(ValueError, match=r"unknown vit argument\(s\): embed_dims \(did you mean embed_dim\?\)"):
        vitkit.create_model("vit_pico_patch4_32", embed_dims=10)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(class_token=False, global_pool="avg", reg_tokens=4, no_embed_class=True),
        dict(distilled=True),
        dict(global_pool="gem", qkv_bias=False, init_values=1e-5, mlp_ratio=3.0),
        dict(global_pool="max", qk_norm=True, pre_norm=True),
        dict(in_chans=1),
    ],
)
def test_variants_forward_and_api(kwargs):
    model = vitkit.create_model("vit_pico_patch4_32", **TINY, **kwargs).eval()
    x = torch.randn(2, model.config.in_chans, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 64 + model.num_prefix_tokens, 32)
    c = model.config
    assert model.num_prefix_tokens == int(c.class_token) + int(c.distilled) + c.reg_tokens
    logits = model.forward_head(feats)
    assert logits.shape == (2, 10)
    assert torch.allclose(model(x), logits)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 32)


def test_config_round_trips_through_json():
    model = vitkit.create_model("vit_pico_patch4_32", reg_tokens=2, init_values=0.1, global_pool="avg")
    data = json.loads(json.dumps(config_to_dict(model.config)))
    assert config_from_dict(data) == model.config
    assert isinstance(model.config, ViTConfig)


def test_forward_intermediates_tokens_and_maps():
    model = vitkit.create_model("vit_pico_patch4_32", **TINY, reg_tokens=1).eval()
    x = torch.randn(2, 3, 32, 32)
    final, maps = model.forward_intermediates(x, indices=[0, -1])
    assert torch.allclose(final, model.forward_features(x), atol=1e-6)
    assert [m.shape for m in maps] == [(2, 32, 8, 8)] * 2
    tokens = model.forward_intermediates(
        x, indices=1, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
    )
    (patches, prefix), = tokens
    assert patches.shape == (2, 64, 32) and prefix.shape == (2, 2, 32)
    # the last block's NLC output, normalised, is the patch part of forward_features
    normed = model.forward_intermediates(x, indices=1, output_fmt="NLC", norm=True, intermediates_only=True)[0]
    assert torch.allclose(normed, final[:, 2:], atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[5])


def test_prune_intermediate_layers_keeps_outputs():
    model = vitkit.create_model("vit_pico_patch4_32", **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    want = model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
    model.prune_intermediate_layers([0])
    assert len(model.blocks) == 1
    assert torch.allclose(model.forward_intermediates(x, indices=[0], intermediates_only=True)[0], want)


def test_reset_classifier_and_no_weight_decay():
    model = vitkit.create_model("deit_pico_distilled_patch4_32")
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert model.config.num_classes == 3
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 64)
    assert {"pos_embed", "cls_token", "dist_token"} <= model.no_weight_decay()


def test_distilled_training_returns_both_heads():
    model = vitkit.create_model("deit_pico_distilled_patch4_32").train()
    model.set_distilled_training(True)
    cls, dist = model(torch.randn(2, 3, 32, 32))
    assert cls.shape == dist.shape == (2, 10)
    model.eval()
    assert torch.allclose(model(torch.zeros(2, 3, 32, 32)), (cls * 0 + model(torch.zeros(2, 3, 32, 32))))


def test_drop_path_rates_increase_with_depth():
    model = vitkit.create_model("vit_pico_patch4_32", drop_path_rate=0.3)
    rates = [float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)


def test_bad_input_shapes_are_explained():
    model = vitkit.create_model("vit_pico_patch4_32")
    with pytest.raises(ValueError, match=r"expected 3 input channel\(s\), got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected input size 32x32, got 30x30; 30x30 is not divisible by patch size"):
        model(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match="img_size 30 is not divisible by patch_size 4"):
        vitkit.create_model("vit_pico_patch4_32", img_size=30)
    with pytest.raises(ValueError, match="global_pool='token' needs class_token=True"):
        vitkit.create_model("vit_pico_patch4_32", class_token=False)


def test_img_size_override_resamples_grid():
    model = vitkit.create_model("vit_pico_patch4_32", img_size=48)
    assert model.pos_embed.shape == (1, 1 + 144, 64)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_flops_count_attention():
    model = vitkit.create_model("vit_small_patch16_224")
    flops = vitkit.count_flops(model, (3, 224, 224))
    # timm / fvcore report 4.6 GMACs for ViT-S/16; attention matmuls alone are ~0.36 GFLOPs of it.
    assert 9.1e9 < flops < 9.3e9
    assert vitkit.count_flops(model, (3, 224, 224), batch_size=2) == 2 * flops


def test_chunked_cpu_inference_mlp_matches_plain(monkeypatch):
    import vitkit.layers.mlp as mlp

    model = vitkit.create_model("vit_pico_patch4_32").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.enable_grad():
        reference = model(x)  # with autograd on, the plain path runs
    monkeypatch.setattr(mlp, "CPU_INFERENCE_ROWS", 7)  # 4 * 65 rows -> many uneven chunks
    calls = []
    plain_chunked = mlp.Mlp._forward_chunked
    monkeypatch.setattr(mlp.Mlp, "_forward_chunked", lambda self, t: calls.append(1) or plain_chunked(self, t))
    with torch.no_grad():
        chunked = model(x)
    assert len(calls) == model.config.depth
    # tiny chunks may pick other GEMM kernels, so equal up to float rounding (ViT-S's 1024 rows: bit-identical)
    torch.testing.assert_close(chunked, reference.detach(), atol=1e-5, rtol=1e-5)
