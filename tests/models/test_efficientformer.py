"""EfficientFormer: timm parity (fixture), parameter counts, the original release's layout, the fixed input size,
the backbone contract, config errors."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

import vitkit
import vitkit.models.efficientformer  # noqa: F401  (registers the family)
from vitkit.models import make_config
from vitkit.models._groups import layer_ids
from vitkit.models.efficientformer import EfficientFormer, EfficientFormerConfig
from vitkit.models.efficientformer.convert import from_original
from vitkit.models.efficientformer.export import timm_peer
from vitkit.models.registry import family_named

SMALL = dict(depths=(1, 1, 2, 3), embed_dims=(8, 16, 24, 32), num_vit=2, num_classes=5, img_size=64)
FIXTURE = "efficientformer_cfg_224"


def fixture_model(fixtures_dir):
    meta = json.loads((fixtures_dir / "timm" / f"{FIXTURE}.json").read_text())
    tensors = load_file(fixtures_dir / "timm" / f"{FIXTURE}.safetensors")
    ref = {k: tensors.pop(k) for k in ("__input__", "__logits__", "__features__")}
    return vitkit.create_model(meta["timm_model"], **meta["kwargs"]).eval(), tensors, ref


def test_reproduces_timm_outputs(fixtures_dir):
    model, state_dict, ref = fixture_model(fixtures_dir)
    model.load_state_dict(state_dict, strict=True)  # timm's keys, unchanged (attention_bias_idxs included)
    x = ref["__input__"]
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 49, 48)  # tokens of the 7x7 grid
        torch.testing.assert_close(features, ref["__features__"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model(x), ref["__logits__"], atol=1e-4, rtol=0)
        final, maps = model.forward_intermediates(x, norm=True)
        torch.testing.assert_close(final, ref["__features__"], atol=1e-4, rtol=0)
        assert maps[-1].shape == (2, 48, 7, 7)
        torch.testing.assert_close(maps[-1].flatten(2).transpose(1, 2), ref["__features__"], atol=1e-4, rtol=0)


def _to_original(state_dict):
    """timm's names back to github.com/snap-research/EfficientFormer's (the inverse of checkpoint_filter_fn)."""
    stem = {"stem.conv1.": "patch_embed.0.", "stem.norm1.": "patch_embed.1.", "stem.conv2.": "patch_embed.3.",
            "stem.norm2.": "patch_embed.4."}
    out = {}
    for key, value in state_dict.items():
        for new, old in stem.items():
            key = old + key.removeprefix(new) if key.startswith(new) else key
        key = re.sub(r"^stages\.(\d+)\.downsample\.(conv|norm)\.",
                     lambda m: f"network.{2 * int(m[1]) - 1}.{'proj' if m[2] == 'conv' else 'norm'}.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.", lambda m: f"network.{2 * int(m[1])}.", key)
        key = re.sub(r"ls([12])\.gamma$", r"layer_scale_\1", key)
        out[key.replace("head_dist.", "dist_head.")] = value
    return out


def test_original_release_layout_loads(fixtures_dir):
    model, state_dict, ref = fixture_model(fixtures_dir)
    old = _to_original(state_dict)
    assert {"patch_embed.0.weight", "network.1.proj.weight", "network.6.2.layer_scale_1",
            "network.6.2.token_mixer.attention_biases", "dist_head.weight"} <= set(old)
    assert from_original(state_dict) is state_dict  # timm's own layout passes through
    model.load_state_dict(model.adapt_state_dict(old), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)


# exact: timm's EfficientFormer built from its source on the meta device (results/*.csv: 12.29M, 31.41M, 82.23M)
TIMM_PARAMS = {"efficientformer_l1": 12_289_928, "efficientformer_l3": 31_406_000, "efficientformer_l7": 82_229_328}


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_parameter_count_matches_timm(name):
    with torch.device("meta"):
        model = vitkit.create_model(name)
    assert vitkit.count_params(model) == TIMM_PARAMS[name]


def test_named_configs_and_create_model_overrides():
    assert set(vitkit.list_models("efficientformer*")) >= set(TIMM_PARAMS)
    l3, l7 = vitkit.models.model_config("efficientformer_l3"), vitkit.models.model_config("efficientformer_l7")
    assert (l3.depths, l3.embed_dims, l3.num_vit) == ((4, 4, 12, 6), (64, 128, 320, 512), 4)
    assert (l7.depths, l7.embed_dims, l7.num_vit) == ((6, 6, 18, 8), (96, 192, 384, 768), 8)
    model = vitkit.create_model("efficientformer_l1", num_classes=3, in_chans=1, img_size=96, drop_path_rate=0.1,
                                **{k: v for k, v in SMALL.items() if k not in ("num_classes", "img_size")})
    spec = model.input_spec
    assert spec.img_size == (96, 96) and spec.fixed_size and spec.in_chans == 1 and spec.size_multiple == 32
    assert (spec.crop_pct, spec.interpolation) == (0.95, "bicubic")
    assert model.stages[-1].blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    attn = model.stages[-1].blocks[-1].token_mixer
    assert attn.attention_biases.shape == (8, 9) and attn.attention_bias_idxs.shape == (9, 9)  # 3x3 grid at 96
    assert model.eval()(torch.randn(2, 1, 96, 96)).shape == (2, 3)


def test_last_stage_layout_follows_num_vit():
    """timm's indices: a `Flat` before the first Meta3D block has its own index in `blocks`."""
    model = vitkit.create_model("efficientformer_l1", **{**SMALL, "num_vit": 2})
    kinds = [type(b).__name__ for b in model.stages[-1].blocks]
    assert kinds == ["MetaBlock2d", "Flat", "MetaBlock1d", "MetaBlock1d"]
    every = vitkit.create_model("efficientformer_l1", **{**SMALL, "num_vit": 3})
    assert [type(b).__name__ for b in every.stages[-1].blocks] == ["Flat"] + ["MetaBlock1d"] * 3
    assert all(type(b).__name__ == "MetaBlock2d" for s in every.stages[:-1] for b in s.blocks)


def test_other_input_sizes_are_refused_with_the_expected_size():
    model = vitkit.create_model("efficientformer_l1", **SMALL).eval()
    for bad in (torch.randn(1, 3, 96, 96), torch.randn(1, 3, 64, 96)):
        with pytest.raises(ValueError, match=r"^EfficientFormer has a fixed input size: it takes 64x64 images .*"
                                             r"a 2x2 grid\), got \d+x96$") as err:
            model(bad)
        assert "\n" not in str(err.value)
        with pytest.raises(ValueError, match="fixed input size"):
            model.forward_intermediates(bad)
    with pytest.raises(ValueError, match=r"takes 64x64 images .* got a tensor of shape \(3, 64, 64\)"):
        model(torch.randn(3, 64, 64))
    # img_size=...: the attention grid follows at build time; too large a grid is refused
    with pytest.raises(ValueError, match=r"img_size=2048 gives the attention blocks a 64x64 grid; at most 32x32"):
        vitkit.create_model("efficientformer_l1", img_size=2048)


def test_weights_of_another_grid_are_refused(fixtures_dir):
    _, state_dict, _ = fixture_model(fixtures_dir)
    meta = json.loads((fixtures_dir / "timm" / f"{FIXTURE}.json").read_text())
    bigger = vitkit.create_model("efficientformer_l1", **meta["kwargs"], img_size=256)
    with pytest.raises(ValueError, match=r"attention_biases covers a 7x7 grid; this model's img_size 256 needs "
                                         r"8x8: .* not resampled"):
        bigger.adapt_state_dict(state_dict)


def test_capture_attention_gives_the_probabilities_used():
    from vitkit.evaluation.attention_maps import capture_attention

    model = vitkit.create_model("efficientformer_l1", **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    attn = model.stages[-1].blocks[-1].token_mixer
    assert attn.on_attention is None
    with torch.no_grad():
        plain = model(x)
        with capture_attention(model) as maps:
            captured = model(x)
    assert torch.equal(plain, captured) and len(maps) == 2
    assert all(m.shape == (2, 8, 4, 4) for m in maps)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 8, 4))
    with capture_attention(model, grad=True) as maps:
        model(x).sum().backward()
    assert maps[0].requires_grad


def test_attention_bias_index_is_the_relative_offset():
    model = vitkit.create_model("efficientformer_l1", **{**SMALL, "img_size": 96})  # 3x3 grid
    idx = model.stages[-1].blocks[-1].token_mixer.attention_bias_idxs
    assert idx.dtype == torch.long and idx[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert idx[4].tolist() == [4, 3, 4, 1, 0, 1, 4, 3, 4]  # the centre: |dy| * 3 + |dx|
    assert torch.equal(idx, idx.T)


def test_contract_intermediates_and_feature_info():
    model = vitkit.create_model("efficientformer_l1", **SMALL).eval()
    assert [(f.num_chs, f.reduction, f.module) for f in model.feature_info] == [
        (8, 4, "stages.0"), (16, 8, "stages.1"), (24, 16, "stages.2"), (32, 32, "stages.3")]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape for m in maps] == [(2, f.num_chs, 64 // f.reduction, 64 // f.reduction)
                                           for f in model.feature_info]
        torch.testing.assert_close(final, model.forward_features(x))
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        torch.testing.assert_close(normed[0].flatten(2).transpose(1, 2), final)
        assert not torch.allclose(maps[-1], normed[0])
        some = model.forward_intermediates(x, indices=[0, -2], intermediates_only=True)
        assert [m.shape[1] for m in some] == [8, 24]
        assert model.forward_head(final, pre_logits=True).shape == (2, 32)
        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(x, output_fmt="NLC")
        taken = model.prune_intermediate_layers(indices=[1])
    assert taken == [1] and len(model.stages) == 2 and model.num_classes == 0
    with torch.no_grad():
        assert model.forward_intermediates(x, intermediates_only=True)[-1].shape == (2, 16, 8, 8)


def test_downsamples_change_the_reductions():
    model = vitkit.create_model("efficientformer_l1", depths=(1, 1, 1, 2), embed_dims=(8, 16, 16, 24), num_vit=1,
                                downsamples=(False, True, False, True), img_size=64)
    assert [f.reduction for f in model.feature_info] == [4, 8, 8, 16]
    assert model.input_spec.size_multiple == 16
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 64, 64), intermediates_only=True)
    assert [m.shape[-1] for m in maps] == [16, 8, 8, 4]
    assert model.stages[-1].blocks[-1].token_mixer.attention_biases.shape == (8, 16)


def test_distillation_heads_and_reset_classifier():
    model = vitkit.create_model("efficientformer_l1", **SMALL)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(model(x), (model.head(pooled) + model.head_dist(pooled)) / 2)
    model.set_distilled_training(True)
    assert torch.is_tensor(model.eval()(x))  # both heads apart only while training
    cls, dist = model.train()(x)
    assert cls.shape == dist.shape == (2, 5)
    model.set_distilled_training(False)
    assert model.get_classifier() == (model.head, model.head_dist)
    model.eval().reset_classifier(7)
    assert model.head.out_features == model.head_dist.out_features == 7 and model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert isinstance(model.head, torch.nn.Identity) and isinstance(model.head_dist, torch.nn.Identity)
    assert model(x).shape == (2, 32) and model.num_classes == model.config.num_classes == 0
    model.reset_classifier(0, global_pool="")
    assert model(x).shape == (2, 4, 32) and model.config.global_pool == ""
    with pytest.raises(ValueError, match="global_pool='max'"):
        model.reset_classifier(3, global_pool="max")
    assert model.config.global_pool == "" and model.num_classes == 0  # a refused pool changes nothing


def test_no_weight_decay_and_groups():
    model = vitkit.create_model("efficientformer_l1", **SMALL)
    assert model.no_weight_decay() == {"stages.3.blocks.2.token_mixer.attention_biases",
                                       "stages.3.blocks.3.token_mixer.attention_biases"}
    ids = layer_ids(model)  # stem 0; one group per block, a stage's downsample with its first block
    assert ids["stem.conv1.weight"] == ids["stem.norm2.bias"] == 0
    assert ids["stages.0.blocks.0.mlp.fc1.weight"] == 1
    assert ids["stages.1.downsample.conv.weight"] == ids["stages.1.blocks.0.ls1.gamma"] == 2
    assert ids["stages.3.blocks.3.token_mixer.qkv.weight"] == ids["norm.weight"] == 7
    assert ids["head.weight"] == ids["head_dist.bias"] == 8
    coarse = model.group_matcher(coarse=True)
    unmatched = {n for n, _ in model.named_parameters() if not re.match(coarse["stem"], n)
                 and not any(re.match(p, n) for p, _ in coarse["blocks"])}
    assert unmatched == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = vitkit.create_model("efficientformer_l1", **SMALL, drop_path_rate=0.0).train()
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
    model = vitkit.create_model("efficientformer_l3", **SMALL).eval()
    vitkit.save(model, tmp_path)
    loaded = vitkit.load(tmp_path).eval()
    assert isinstance(loaded, EfficientFormer) and loaded.config == model.config
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_in_chans_adaptation_of_rgb_weights(fixtures_dir):
    _, state_dict, _ = fixture_model(fixtures_dir)
    meta = json.loads((fixtures_dir / "timm" / f"{FIXTURE}.json").read_text())
    gray = vitkit.create_model("efficientformer_l1", **meta["kwargs"], in_chans=1)
    adapted = gray.adapt_state_dict(state_dict)
    gray.load_state_dict(adapted, strict=True)
    torch.testing.assert_close(adapted["stem.conv1.weight"], state_dict["stem.conv1.weight"].sum(1, True))


@pytest.mark.parametrize("kwargs, message", [
    (dict(depths=()), r"depths must be a non-empty list"),
    (dict(depths=4), r"depths must be a non-empty list"),
    (dict(embed_dims=(8, 16, 24)), r"embed_dims has 3 entries .* expected one per stage \(4"),
    (dict(embed_dims=(8, 16, 0, 32)), r"embed_dims must be a positive integer, got 0"),
    (dict(downsamples=(False, True, False, True)), r"embed_dims\[2\]=224 differs .*downsamples\[2\]=False"),
    (dict(downsamples=(False, 1, True, True)), r"downsamples must hold booleans"),
    (dict(num_vit=0), r"num_vit must be a positive integer, got 0"),
    (dict(num_vit=5), r"num_vit=5 attention blocks do not fit in the last stage's depths\[-1\]=4"),
    (dict(pool_size=4), r"pool_size must be odd"),
    (dict(mlp_ratios=(4, 4, 4, 4)), r"mlp_ratios must be one number"),
    (dict(layer_scale_init_value="1e-5"), r"layer_scale_init_value must be a number"),
    (dict(global_pool="token"), r"global_pool='token' is not one of"),
    (dict(img_size=0), r"img_size must be a positive integer"),
    (dict(num_classes=-1), r"num_classes must be a non-negative integer"),
    (dict(drop_path_rate=1.5), r"drop_path_rate must be in \[0, 1\)"),
])
def test_bad_config_values_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        make_config("efficientformer", **kwargs)
    assert "\n" not in str(err.value)


def test_untrusted_config_limits():
    from vitkit.weights.loading import check_config_ranges

    base = {"architecture": "efficientformer", "depths": [1, 1, 2, 3], "embed_dims": [8, 16, 24, 32], "num_vit": 2}
    check_config_ranges({**base, "img_size": 1024}, "config.json")
    for bad in ({"num_vit": 10**6}, {"embed_dims": [8, 16, 24, 10**9]}, {"img_size": 1056},
                {"img_size": 600, "downsamples": [False, True, False, False]}):
        key = "img_size" if "img_size" in bad else next(iter(bad))
        with pytest.raises(ValueError, match=f"{key}=.* is out of range"):
            check_config_ranges({**base, **bad}, "config.json")


def test_family_registration_and_timm_arguments(fixtures_dir):
    from vitkit.weights.timm import config_from_timm, from_timm, timm_kwargs_from

    family = family_named("efficientformer")
    assert family.config_cls is EfficientFormerConfig and family.model_cls is EfficientFormer
    assert family.from_hf == {} and family.transformers_peer is None  # transformers removed EfficientFormer
    config = make_config("efficientformer", **{k: v for k, v in SMALL.items() if k != "img_size"})
    class_name, kwargs = timm_kwargs_from(config)
    assert class_name == "EfficientFormer" and "img_size" not in kwargs
    assert config_from_timm(class_name, kwargs) == config
    _, state_dict, ref = fixture_model(fixtures_dir)
    meta = json.loads((fixtures_dir / "timm" / f"{FIXTURE}.json").read_text())
    model = from_timm("EfficientFormer", {**meta["kwargs"], "pretrained_cfg": {}}, state_dict).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)
    assert timm_peer(make_config("efficientformer", img_size=200))[1] == "EfficientFormer"  # still a 7x7 grid
    with pytest.raises(ValueError, match=r"img_size=256 gives a 8x8 attention grid, timm's is always 7x7"):
        timm_peer(make_config("efficientformer", img_size=256))


def test_consumers_work_through_the_contract():
    from vitkit.training.optim import build_optimizer

    model = vitkit.create_model("efficientformer_l1", **SMALL)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lr_of = {n: g["lr"] for g in optimizer.param_groups for p in g["params"] for n, q in model.named_parameters()
             if p is q}
    per_stage = [max(lr for n, lr in lr_of.items() if n.startswith(f"stages.{i}.")) for i in range(4)]
    assert per_stage == sorted(per_stage) and len(set(per_stage)) == 4
    assert lr_of["head_dist.weight"] == pytest.approx(1e-3) and lr_of["stem.conv1.weight"] < per_stage[0]
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert vitkit.optimize(model, "bf16")(x).float().shape == (2, 5)
        assert vitkit.optimize(model, "int8")(x).shape == (2, 5)
    with pytest.raises(ValueError, match=r"tome needs a model whose blocks all see one token sequence"):
        vitkit.optimize(model, "tome:r=2")


def test_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.efficiency.onnx_export import OnnxModel, export_onnx

    model = vitkit.create_model("efficientformer_l1", **SMALL).eval()
    session = OnnxModel(export_onnx(model, tmp_path / "m.onnx"), model.config)
    for batch in (1, 3):  # the batch dimension is dynamic
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            assert (session(x) - model(x)).abs().max() < 1e-4
