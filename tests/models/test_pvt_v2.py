"""PVTv2: timm parity (fixture), parameter counts, the original and Hugging Face layouts, the backbone contract."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

import vitkit
import vitkit.models.pvt_v2  # noqa: F401  (registers the family)
from vitkit.models import build_model, make_config
from vitkit.models._groups import layer_ids
from vitkit.models.pvt_v2 import PvtV2Config, PyramidVisionTransformerV2
from vitkit.models.pvt_v2.convert import from_hf, from_original
from vitkit.models.pvt_v2.export import hf_state_dict_from, timm_peer, transformers_peer
from vitkit.models.registry import family_named

SMALL = dict(depths=(1, 2, 1, 1), embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), num_classes=5, img_size=64)


def fixture_model(fixtures_dir, name):
    meta = json.loads((fixtures_dir / "timm" / f"{name}.json").read_text())
    tensors = load_file(fixtures_dir / "timm" / f"{name}.safetensors")
    ref = {k: tensors.pop(k) for k in ("__input__", "__logits__", "__features__")}
    return vitkit.create_model(meta["timm_model"], **meta["kwargs"]).eval(), tensors, ref


def test_reproduces_timm_outputs(fixtures_dir):
    model, state_dict, ref = fixture_model(fixtures_dir, "pvt_v2_cfg_64")
    model.load_state_dict(state_dict, strict=True)  # timm's keys, unchanged
    with torch.no_grad():
        features = model.forward_features(ref["__input__"])
        assert features.shape == (2, 64, 2, 2)  # NCHW
        torch.testing.assert_close(features, ref["__features__"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)
        maps = model.forward_intermediates(ref["__input__"], intermediates_only=True)
        torch.testing.assert_close(maps[-1], ref["__features__"], atol=1e-4, rtol=0)


def test_original_release_layout_loads(fixtures_dir):
    """github.com/whai362/PVT names (timm's checkpoint_filter_fn): patch_embedN, blockN.j, normN, dwconv.dwconv."""
    model, state_dict, ref = fixture_model(fixtures_dir, "pvt_v2_cfg_64")
    old = {}
    for key, value in state_dict.items():
        key = re.sub(r"^patch_embed\.", "patch_embed1.", key)
        key = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}.", key)
        key = re.sub(r"^stages\.(\d+)\.norm\.", lambda m: f"norm{int(m[1]) + 1}.", key)
        old[key.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")] = value
    assert "block1.0.attn.q.weight" in old and "norm4.weight" in old and "patch_embed2.proj.weight" in old
    assert from_original(state_dict) is state_dict  # timm's own layout passes through
    model.load_state_dict(model.adapt_state_dict(old), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)


# timm's param_count (results/*.csv, to 0.01M) and transformers' PvtV2ForImageClassification, exactly
TIMM_PARAMS = {"pvt_v2_b0": 3_666_760, "pvt_v2_b1": 14_009_000, "pvt_v2_b2": 25_362_856, "pvt_v2_b2_li": 22_553_512,
               "pvt_v2_b3": 45_238_696, "pvt_v2_b4": 62_556_072, "pvt_v2_b5": 81_956_008}


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_parameter_count_matches_timm(name):
    with torch.device("meta"):
        model = vitkit.create_model(name)
    assert vitkit.count_params(model) == TIMM_PARAMS[name]


def test_named_configs_and_create_model_overrides():
    assert set(TIMM_PARAMS) <= set(vitkit.list_models("pvt_v2*"))
    li = vitkit.models.model_config("pvt_v2_b2_li")
    assert li.linear and li.embed_dims == (64, 128, 320, 512) and li.num_heads == (1, 2, 5, 8)
    assert vitkit.models.model_config("pvt_v2_b5").mlp_ratios == (4.0,) * 4
    model = vitkit.create_model("pvt_v2_b0", num_classes=3, in_chans=1, img_size=96, drop_path_rate=0.1, **{
        k: v for k, v in SMALL.items() if k not in ("num_classes", "img_size")})
    assert model.config.drop_path_rate == 0.1 and model.input_spec.img_size == (96, 96)
    assert model.input_spec.in_chans == 1 and model.input_spec.crop_pct == 0.9
    assert model.stages[-1].blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert model(torch.randn(2, 1, 96, 96)).shape == (2, 3)
    # timm's scalar per-stage arguments repeat over the stages
    assert make_config("pvt_v2", num_heads=2, sr_ratios=1, mlp_ratios=4).num_heads == (2, 2, 2, 2)


def test_linear_attention_pools_keys_to_7x7():
    model = vitkit.create_model("pvt_v2_b2_li", **SMALL).eval()
    attn = model.stages[0].blocks[0].attn
    assert isinstance(attn.pool, torch.nn.AdaptiveAvgPool2d) and attn.sr.kernel_size == (1, 1)
    assert isinstance(model.stages[0].blocks[0].mlp.relu, torch.nn.ReLU)
    maps = []
    attn.on_attention = maps.append
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 80))
        model(torch.randn(1, 3, 8, 8))  # no spatial-reduction minimum with linear attention
    assert maps[0].shape == (2, 1, 16 * 20, 49)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 1, 320))


def test_capture_attention_spatial_reduction_shapes():
    from vitkit.evaluation.attention_maps import capture_attention

    model = vitkit.create_model("pvt_v2_b0", **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        with capture_attention(model) as maps:
            captured = model(x)
    assert torch.equal(plain, captured) and len(maps) == 5
    # stage grids 16, 8, 4, 2; reduced by sr 8, 4, 2, 1 to 2x2 keys each
    assert [tuple(m.shape) for m in maps] == [(2, 1, 256, 4), (2, 2, 64, 4), (2, 2, 64, 4), (2, 3, 16, 4),
                                              (2, 4, 4, 4)]


def test_contract_intermediates_and_feature_info():
    model = vitkit.create_model("pvt_v2_b0", **SMALL).eval()
    assert [(f.num_chs, f.reduction, f.module) for f in model.feature_info] == [
        (8, 4, "stages.0"), (16, 8, "stages.1"), (24, 16, "stages.2"), (32, 32, "stages.3")]
    modules = dict(model.named_modules())
    assert all(f.module in modules for f in model.feature_info)
    spec = model.input_spec
    assert spec.img_size == (64, 64) and not spec.fixed_size and spec.size_multiple == 1
    assert (spec.crop_pct, spec.interpolation) == (0.9, "bicubic")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape for m in maps] == [(2, f.num_chs, 64 // f.reduction, 64 // f.reduction)
                                           for f in model.feature_info]
        torch.testing.assert_close(final, model.forward_features(x))
        nlc = model.forward_intermediates(x, indices=[0, -1], output_fmt="NLC", intermediates_only=True)
        assert [m.shape for m in nlc] == [(2, 256, 8), (2, 4, 32)]
        torch.testing.assert_close(nlc[1], final.flatten(2).transpose(1, 2))
        nhwc = model.forward_intermediates(x, indices=1, output_fmt="NHWC", intermediates_only=True, norm=True)
        torch.testing.assert_close(nhwc[0], final.permute(0, 2, 3, 1))
        assert model.forward_head(final, pre_logits=True).shape == (2, 32)
        odd = torch.randn(1, 3, 70, 45)  # any size: the overlapping embeddings pad, maps have ceil(side / stride)
        assert [m.shape[-2:] for m in model.forward_intermediates(odd, intermediates_only=True)] == [
            (18, 12), (9, 6), (5, 3), (3, 2)]
        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(x, output_fmt="NCL")
        taken = model.prune_intermediate_layers(indices=2)
    assert taken == [2, 3] and len(model.stages) == 4 and model.num_classes == 0
    pruned = model.prune_intermediate_layers(indices=[1])
    assert pruned == [1] and len(model.stages) == 2
    with torch.no_grad():
        assert model.forward_intermediates(x, indices=[1], intermediates_only=True)[0].shape == (2, 16, 8, 8)


def test_too_small_inputs_are_explained():
    model = vitkit.create_model("pvt_v2_b0", **SMALL)  # sr_ratios 8, 4, 2, 1: stage 0 needs a grid of 8
    assert model.config.min_size() == 29
    with pytest.raises(ValueError, match=r"^input 28x64 gives stage 0 a 7x16 grid, smaller than its sr_ratio 8; "
                                         r"use sides of at least 29$"):
        model(torch.randn(1, 3, 28, 64))
    assert model(torch.randn(1, 3, 29, 29)).shape == (1, 5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(3, 64, 64))


def test_reset_classifier_no_weight_decay_and_groups():
    model = vitkit.create_model("pvt_v2_b0", **SMALL)
    x = torch.randn(1, 3, 64, 64)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model(x).shape == (1, 7)
    model.reset_classifier(0)
    assert model(x).shape == (1, 32) and model.num_classes == model.config.num_classes == 0
    model.reset_classifier(0, global_pool="")
    assert model(x).shape == (1, 32, 2, 2) and model.config.global_pool == ""
    with pytest.raises(ValueError, match="global_pool='max'"):
        model.reset_classifier(3, global_pool="max")
    assert model.config.global_pool == "" and model.num_classes == 0  # a refused pool changes nothing
    model.reset_classifier(4, global_pool="avg")
    assert model.no_weight_decay() == set()
    coarse = model.group_matcher(coarse=True)  # timm's: stem, stages; the head after
    unmatched = {n for n, _ in model.named_parameters() if not re.match(coarse["stem"], n)
                 and not re.match(coarse["blocks"], n)}
    assert unmatched == {"head.weight", "head.bias"}
    ids = layer_ids(model)  # stem 0; stage 0 block 1 (+ norm); stage 1 blocks 2, 3 (+ downsample, norm); ...
    assert ids["patch_embed.proj.weight"] == 0 and ids["stages.0.blocks.0.attn.q.weight"] == 1
    assert ids["stages.0.norm.weight"] == 1
    assert ids["stages.1.downsample.proj.weight"] == ids["stages.1.blocks.0.attn.kv.weight"] == 2
    assert ids["stages.1.blocks.1.mlp.fc1.weight"] == ids["stages.1.norm.bias"] == 3
    assert ids["stages.3.norm.weight"] == 5 and ids["head.weight"] == ids["head.bias"] == 6


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = vitkit.create_model("pvt_v2_b0", **SMALL).train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in model.stages)
    model(x).sum().backward()
    for p, g in zip(model.parameters(), plain, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


def test_save_load_round_trip(tmp_path):
    model = vitkit.create_model("pvt_v2_b2_li", **SMALL).eval()
    vitkit.save(model, tmp_path)
    loaded = vitkit.load(tmp_path).eval()
    assert isinstance(loaded, PyramidVisionTransformerV2) and loaded.config == model.config
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_in_chans_adaptation_of_rgb_weights(fixtures_dir):
    _, state_dict, _ = fixture_model(fixtures_dir, "pvt_v2_cfg_64")
    meta = json.loads((fixtures_dir / "timm" / "pvt_v2_cfg_64.json").read_text())
    gray = vitkit.create_model("pvt_v2_b0", **meta["kwargs"], in_chans=1)
    adapted = gray.adapt_state_dict(state_dict)
    gray.load_state_dict(adapted, strict=True)
    torch.testing.assert_close(adapted["patch_embed.proj.weight"], state_dict["patch_embed.proj.weight"].sum(1, True))


@pytest.mark.parametrize("kwargs, message", [
    (dict(embed_dims=(8, 16, 24, 30), num_heads=(1, 2, 3, 4)),
     r"embed_dims must be divisible by num_heads .*\(30, 4\)"),
    (dict(num_heads=(1, 2, 4)), r"num_heads has 3 entries .* expected one per stage \(4"),
    (dict(sr_ratios=(8, 4, 0, 1)), r"sr_ratios must hold positive integers"),
    (dict(mlp_ratios=(8, 8, -4, 4)), r"mlp_ratios must hold positive numbers"),
    (dict(depths=()), r"depths must be a non-empty list"),
    (dict(global_pool="token"), r"global_pool='token' is not one of"),
    (dict(img_size=16), r"img_size 16 is too small: .* img_size >= 29"),
    (dict(drop_path_rate=1.5), r"drop_path_rate must be in \[0, 1\)"),
    (dict(norm_eps=0.0), r"norm_eps must be None"),
])
def test_bad_config_values_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        make_config("pvt_v2", **kwargs)
    assert "\n" not in str(err.value)


def test_untrusted_config_limits():
    from vitkit.weights.loading import check_config_ranges

    base = {"architecture": "pvt_v2", **{k: list(v) for k, v in SMALL.items() if isinstance(v, tuple)}}
    check_config_ranges(base, "config.json")
    for bad in ({"sr_ratios": [8, 4, 2, 1000]}, {"mlp_ratios": [1e9, 8, 4, 4]}, {"embed_dims": [8, 16, 24, 10**9]}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}=.* is out of range"):
            check_config_ranges({**base, **bad}, "config.json")


# ----- Hugging Face transformers -----------------------------------------------------------------------------
def _hf_pvt(tmp_path, linear=False, num_labels=5):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.PvtV2Config(image_size=64, depths=[1, 2, 1, 1], hidden_sizes=[8, 16, 24, 32],
                                   num_attention_heads=[1, 2, 3, 4], sr_ratios=[8, 4, 2, 1], mlp_ratios=[8, 8, 4, 4],
                                   linear_attention=linear, num_labels=num_labels)
    hf = transformers.PvtV2ForImageClassification(cfg).eval()
    with torch.no_grad():  # perturb every parameter so zero-initialised ones (biases, norms) matter
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize("linear", [False, True])
def test_hugging_face_conversion_matches_transformers(tmp_path, linear):
    hf = _hf_pvt(tmp_path, linear=linear)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    config, state_dict = from_hf(hf_config, load_file(tmp_path / "model.safetensors"))
    assert config.linear == linear and config.norm_eps == 1e-6 and config.num_classes == 5
    model = build_model(config).eval()
    model.load_state_dict(state_dict, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = hf(pixel_values=x, output_hidden_states=True)
        torch.testing.assert_close(model(x), out.logits, atol=1e-4, rtol=0)
        maps = model.forward_intermediates(x, intermediates_only=True)
        for ours, theirs in zip(maps, out.hidden_states, strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_vitkit_load_of_hugging_face_directory(tmp_path):
    hf = _hf_pvt(tmp_path)
    model = vitkit.load(tmp_path).eval()
    assert isinstance(model, PyramidVisionTransformerV2)
    x = torch.randn(2, 3, 96, 80)  # another size than saved
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)


def test_hugging_face_backbone_without_classifier(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = _hf_pvt(tmp_path)
    base = transformers.PvtV2Model(hf.config).eval()
    base.load_state_dict(hf.pvt_v2.state_dict())
    config, state_dict = from_hf(json.loads((tmp_path / "config.json").read_text()), base.state_dict())
    assert config.num_classes == 0 and not any(k.startswith("head") for k in state_dict)
    model = build_model(config).eval()
    model.load_state_dict(state_dict, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), base(pixel_values=x).last_hidden_state, atol=1e-4,
                                   rtol=0)


def test_unsupported_hugging_face_configs_are_refused():
    with pytest.raises(ValueError, match=r"no equivalent of patch_sizes=\[7, 3, 5, 3\], hidden_act='relu'"):
        from_hf({"patch_sizes": [7, 3, 5, 3], "hidden_act": "relu"}, {})


@pytest.mark.parametrize("linear", [False, True])
def test_transformers_peer_round_trip(linear):
    """export.py is the inverse of from_hf: the peer transformers builds gives this model's logits (norm
    epsilons as transformers' 1e-6 everywhere, timm's 1e-5 in the embeddings: within 1e-4)."""
    pytest.importorskip("transformers")
    from vitkit.weights.hf import to_transformers

    torch.manual_seed(0)
    model = vitkit.create_model("pvt_v2_b2_li" if linear else "pvt_v2_b0", **SMALL).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    class_name, hf_config, convert = transformers_peer(model.config)
    assert class_name == "PvtV2ForImageClassification" and hf_config["linear_attention"] == linear
    config, state_dict = from_hf(hf_config, convert(model.state_dict()))
    assert state_dict.keys() == model.state_dict().keys()
    assert all(torch.equal(state_dict[k], v) for k, v in model.state_dict().items())
    peer = to_transformers(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(peer(pixel_values=x).logits, model(x), atol=1e-4, rtol=0)
    headless = hf_state_dict_from(model.state_dict(), make_config("pvt_v2", **{**SMALL, "num_classes": 0}))
    assert all(k.startswith("encoder.") for k in headless if not k.startswith("classifier."))


def test_peers_refuse_what_they_cannot_equal():
    with pytest.raises(ValueError, match=r"global_pool=''"):
        transformers_peer(make_config("pvt_v2", global_pool=""))
    with pytest.raises(ValueError, match=r"mlp_ratios"):
        transformers_peer(make_config("pvt_v2", mlp_ratios=2.5))
    with pytest.raises(ValueError, match=r"norm_eps=1e-06"):
        timm_peer(make_config("pvt_v2", norm_eps=1e-6))
    module, cls, kwargs, build = timm_peer(make_config("pvt_v2", linear=True))
    assert (module, cls, build) == ("timm.models.pvt_v2", "PyramidVisionTransformerV2", {})
    assert "img_size" not in kwargs and kwargs["linear"] and kwargs["embed_dims"] == (64, 128, 256, 512)


def test_family_registration():
    family = family_named("pvt_v2")
    assert family.config_cls is PvtV2Config and family.model_cls is PyramidVisionTransformerV2
    assert "pvt_v2" in family.from_hf
    config = family.timm_classes["PyramidVisionTransformerV2"]({"depths": [1, 1], "embed_dims": [8, 16],
                                                                 "num_heads": [1, 2], "sr_ratios": [2, 1],
                                                                 "mlp_ratios": [4, 4], "pretrained_cfg": {}})
    assert config.depths == (1, 1) and config.mlp_ratios == (4.0, 4.0)


def test_timm_arguments_round_trip(fixtures_dir):
    from vitkit.weights.timm import config_from_timm, from_timm, timm_kwargs_from

    config = make_config("pvt_v2", **{k: v for k, v in SMALL.items() if k != "img_size"}, linear=True)
    class_name, kwargs = timm_kwargs_from(config)
    assert class_name == "PyramidVisionTransformerV2" and config_from_timm(class_name, kwargs) == config
    _, state_dict, ref = fixture_model(fixtures_dir, "pvt_v2_cfg_64")
    meta = json.loads((fixtures_dir / "timm" / "pvt_v2_cfg_64.json").read_text())
    model = from_timm("PyramidVisionTransformerV2", meta["kwargs"], state_dict).eval()  # timm's class defaults
    assert model.config.sr_ratios == (8, 4, 2, 1) and model.config.mlp_ratios == (8.0, 8.0, 4.0, 4.0)
    with torch.no_grad():
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)
