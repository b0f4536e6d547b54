"""CaiT: timm parity (fixture), parameter counts, the backbone contract on a tiny model, talking-heads
attention capture, config errors."""

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file

import vitkit
import vitkit.models.cait  # noqa: F401  (registers the family)
from vitkit.models import config_from_dict, config_to_dict, make_config
from vitkit.models._groups import layer_ids
from vitkit.models._protocol import Backbone, TokenSequence
from vitkit.models.cait import Cait
from vitkit.models.cait.export import timm_peer

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2, depth_token_only=2, num_classes=5)


def tiny(**overrides) -> Cait:
    return vitkit.create_model("cait_xxs24_224", **{**TINY, **overrides}).eval()


def test_reproduces_timm_fixture(fixtures_dir):
    meta = json.loads((fixtures_dir / "timm" / "cait_cfg_p4_32.json").read_text())
    tensors = load_file(fixtures_dir / "timm" / "cait_cfg_p4_32.safetensors")
    ref = {k: tensors.pop(k) for k in ("__input__", "__logits__", "__features__")}
    model = vitkit.create_model(meta["timm_model"], **meta["kwargs"]).eval()
    assert meta["timm_class"] == "Cait" and isinstance(model, Cait)
    model.load_state_dict(tensors, strict=True)  # timm's keys, unchanged
    with torch.no_grad():
        features = model.forward_features(ref["__input__"])
        assert features.shape == tuple(meta["features_shape"])
        torch.testing.assert_close(features, ref["__features__"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)
    # the original release's layout ({"model": ...} with DDP's `module.` prefix) loads through adapt_state_dict
    from vitkit.weights import load_state_dict

    again = vitkit.create_model(meta["timm_model"], **meta["kwargs"]).eval()
    load_state_dict(again, {"model": {f"module.{k}": v for k, v in tensors.items()}}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)


# exact parameter counts of timm 1.0's models (timm's results/*.csv list them rounded: 11.96M, 17.30M, ...)
PARAMS = {
    "cait_xxs24_224": 11_956_264, "cait_xxs24_384": 12_029_224, "cait_xxs36_224": 17_299_720,
    "cait_xxs36_384": 17_372_680, "cait_xs24_384": 26_670_088, "cait_s24_224": 46_916_200,
    "cait_s24_384": 47_062_120, "cait_s36_384": 68_366_632, "cait_m36_384": 271_221_352,
    "cait_m48_448": 356_460_520,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_match_timm(name):
    with torch.device("meta"):
        model = vitkit.create_model(name)
    assert vitkit.count_params(model) == PARAMS[name]
    assert round(PARAMS[name] / 1e6, 2) == round(vitkit.count_params(model) / 1e6, 2)


def test_parameter_count_by_hand():
    """cait_xxs24_224 from its parts, independently of the module tree."""
    d, heads, n, depth = 192, 4, 196, 24
    mlp = 2 * d * 4 * d + 4 * d + d
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * (heads * heads + heads) + mlp + 2 * d
    class_block = 2 * 2 * d + 3 * (d * d + d) + (d * d + d) + mlp + 2 * d
    total = (3 * 16 * 16 * d + d) + d + n * d + depth * block + 2 * class_block + 2 * d + (d * 1000 + 1000)
    assert total == PARAMS["cait_xxs24_224"]


def test_create_model_overrides_and_input_spec():
    model = tiny(in_chans=1, drop_path_rate=0.1)
    assert model.config.in_chans == 1 and model.blocks[0].drop_path.drop_prob == 0.1
    assert all(b.drop_path.drop_prob == 0.1 for b in model.blocks)  # timm: the same rate in every block
    spec = model.input_spec
    assert spec.fixed_size and spec.img_size == (32, 32) and spec.size_multiple == 4 and spec.in_chans == 1
    assert spec.crop_pct == 1.0 and spec.interpolation == "bicubic" and len(spec.mean) == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="expected input size 32x32, got 48x48"):
        model(torch.randn(1, 1, 48, 48))


def test_contract_intermediates_feature_info_and_head():
    model = tiny()
    assert isinstance(model, Backbone) and not isinstance(model, TokenSequence)  # class token joins late
    assert [(f.num_chs, f.reduction, f.module) for f in model.feature_info] == [
        (32, 4, "blocks.0"), (32, 4, "blocks.1"), (32, 4, "blocks.2")]
    modules = dict(model.named_modules())
    assert all(f.module in modules for f in model.feature_info)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape for m in maps] == [(2, 32, 8, 8)] * 3
        features = model.forward_features(x)
        assert features.shape == (2, 65, 32)
        torch.testing.assert_close(final, features)
        tokens = model.forward_intermediates(x, indices=[-1], output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(tokens[0], maps[-1].flatten(2).transpose(1, 2))
        normed = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True,
                                             stop_early=True)
        torch.testing.assert_close(normed[0], model.norm(tokens[0]))
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
        assert torch.equal(model.forward_head(features), model(x))
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features[:, 0])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[3])


def test_reset_classifier_and_prune():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model(x).shape == (2, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, 32)  # pooled: the class token
        model.reset_classifier(0, "avg")
        torch.testing.assert_close(model(x), model.forward_features(x)[:, 1:].mean(1))
    assert model.config.global_pool == "avg" and model.config.num_classes == 0
    with pytest.raises(ValueError, match="global_pool='map' is not one of"):
        model.reset_classifier(3, "map")
    taken = model.prune_intermediate_layers(indices=[0, 1])
    assert taken == [0, 1] and len(model.blocks) == 2 and len(model.blocks_token_only) == 0
    with torch.no_grad():
        assert model(x).shape == (2, 65, 32)  # timm: no class attention, no pooling


def test_group_matcher_overlaps_class_attention_with_last_blocks_as_timm():
    model = tiny(depth=4)
    ids = layer_ids(model)
    assert set(ids) == {n for n, _ in model.named_parameters()}
    assert ids["cls_token"] == ids["pos_embed"] == ids["patch_embed.proj.weight"] == 0
    assert [ids[f"blocks.{i}.gamma_1"] for i in range(4)] == [1, 2, 3, 4]
    # timm: token-only block j gets depth - depth_token_only + j + 1, the final norm len(blocks)
    assert ids["blocks_token_only.0.attn.q.weight"] == ids["blocks.2.attn.qkv.weight"] == 3
    assert ids["blocks_token_only.1.mlp.fc2.bias"] == ids["norm.weight"] == ids["blocks.3.norm1.bias"] == 4
    assert ids["head.weight"] == ids["head.bias"] == 5
    patterns = [model.group_matcher()["stem"]] + [p for p, _ in model.group_matcher()["blocks"]]
    assert all(any(re.match(p, n) for p in patterns) for n, _ in model.named_parameters() if not n.startswith("head"))
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = tiny().train()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a)


def test_talking_heads_attention_matches_reference_and_is_captured():
    model = tiny()
    attn = model.blocks[1].attn
    with torch.no_grad():  # heads mixed before and after the softmax; perturbed so the mixing matters
        for layer in (attn.proj_l, attn.proj_w):
            layer.weight.copy_(torch.randn(2, 2))
            layer.bias.copy_(torch.randn(2))
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        q, k, v = attn.qkv(x).reshape(2, 64, 3, 2, 16).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) / 4  # head_dim 16
        mixed = torch.einsum("bhnm,gh->bgnm", logits, attn.proj_l.weight) + attn.proj_l.bias[:, None, None]
        probs = torch.einsum("bhnm,gh->bgnm", mixed.softmax(-1), attn.proj_w.weight) + attn.proj_w.bias[:, None, None]
        expected = attn.proj((probs @ v).transpose(1, 2).reshape(2, 64, 32))
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)

    with vitkit.capture_attention(model) as maps, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(2, 2, 64, 64)] * 3 + [(2, 2, 1, 65)] * 2
    torch.testing.assert_close(maps[3].sum(-1), torch.ones(2, 2, 1))  # class attention: a softmax
    with vitkit.capture_attention(model, grad=True) as maps:
        model(torch.randn(1, 3, 32, 32)).sum().backward()
    assert all(m.requires_grad for m in maps)
    assert all(m.on_attention is None for m in model.modules() if hasattr(m, "on_attention"))


def test_save_load_round_trip_and_config_json(tmp_path):
    model = tiny()
    vitkit.save(model, tmp_path / "m")
    loaded = vitkit.load(tmp_path / "m").eval()
    assert isinstance(loaded, Cait) and loaded.config == model.config
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    config = make_config("cait", **{k: v for k, v in TINY.items()})
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config


def test_other_image_size_resamples_position_embedding(tmp_path):
    model = tiny()
    vitkit.save(model, tmp_path / "m")
    bigger = vitkit.load(tmp_path / "m", img_size=48).eval()
    assert bigger.pos_embed.shape == (1, 144, 32) and bigger(torch.randn(1, 3, 48, 48)).shape == (1, 5)


def test_timm_peer_arguments():
    from vitkit.weights.timm import config_from_timm

    config = make_config("cait", **TINY)
    module, cls, kwargs, build_only = timm_peer(config)
    assert (module, cls) == ("timm.models.cait", "Cait") and "norm_eps" not in kwargs
    assert build_only["norm_layer"](8).eps == 1e-6
    assert config_from_timm("Cait", kwargs) == config
    assert config_from_timm("Cait", {**kwargs, "img_size": (32, 32)}) == config


@pytest.mark.parametrize("overrides, message", [
    (dict(embed_dim=30, num_heads=4), r"^embed_dim 30 is not divisible by num_heads 4$"),
    (dict(img_size=30), r"^img_size 30 is not divisible by patch_size 4$"),
    (dict(depth=0), r"^depth must be a positive integer, got 0$"),
    (dict(depth_token_only=-1), r"^depth_token_only must be a non-negative integer, got -1$"),
    (dict(global_pool="max"), r"^global_pool='max' is not one of \('token', 'avg', ''\)$"),
    (dict(init_values=None), r"^init_values must be a positive number, got None$"),
    (dict(drop_path_rate=1.0), r"^drop_path_rate must be in \[0, 1\), got 1.0$"),
    (dict(act_layer="swish"), r"^act_layer='swish' is not one of"),
])
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config("cait", **{**TINY, **overrides})


def test_untrusted_config_bounds(tmp_path):
    from vitkit.weights.loading import check_config_ranges

    with pytest.raises(ValueError, match="mlp_ratio_token_only=1000.0 is out of range"):
        check_config_ranges({"architecture": "cait", **TINY, "mlp_ratio_token_only": 1000.0}, "config.json")
    with pytest.raises(ValueError, match="depth_token_only=100 is out of range"):
        check_config_ranges({"architecture": "cait", **TINY, "depth_token_only": 100}, "config.json")


def test_feature_maps_have_the_patch_grid():
    model = tiny(img_size=48, patch_size=8)
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 48, 48), intermediates_only=True)
    assert all(m.shape == (1, 32, math.ceil(48 / 8), 6) for m in maps)
