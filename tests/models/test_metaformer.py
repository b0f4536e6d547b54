"""MetaFormer (PoolFormer V1 / V2, ConvFormer, CAFormer): timm parity (fixtures), Hugging Face PoolFormer,
parameter counts, the backbone contract on tiny models, config errors."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import vitkit
import vitkit.models.metaformer  # noqa: F401  (registers the family)
from vitkit.models import build_model
from vitkit.models._groups import layer_ids
from vitkit.models.metaformer import MetaFormer
from vitkit.models.metaformer.convert import from_hf
from vitkit.models.metaformer.export import transformers_peer

TINY = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), head_dim=8, img_size=64)
NAMES = ["poolformer_s12", "poolformerv2_s12", "convformer_s18", "caformer_s18"]


def fixture_model(fixtures_dir, name):
    meta = json.loads((fixtures_dir / "timm" / f"{name}.json").read_text())
    tensors = load_file(fixtures_dir / "timm" / f"{name}.safetensors")
    ref = {k: tensors.pop(k) for k in ("__input__", "__logits__", "__features__")}
    model = vitkit.create_model(meta["timm_model"], **meta["kwargs"])
    return model.eval(), tensors, ref


@pytest.mark.parametrize("name", ["poolformerv2_cfg_32", "convformer_cfg_32", "caformer_cfg_64"])
def test_reproduces_timm_outputs(fixtures_dir, name):
    model, state_dict, ref = fixture_model(fixtures_dir, name)
    model.load_state_dict(state_dict, strict=True)  # timm's keys, unchanged
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(ref["__input__"]), ref["__features__"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)


def test_caformer_fixture_keeps_timms_missing_downsample(fixtures_dir):
    """dims (16, 32, 64, 64): timm builds no downsampling for the last stage; feature_info says so."""
    model, _, ref = fixture_model(fixtures_dir, "caformer_cfg_64")
    assert isinstance(model.stages[3].downsample, torch.nn.Identity)
    assert [i.reduction for i in model.feature_info] == [4, 8, 16, 16]
    with torch.no_grad():
        maps = model.forward_intermediates(ref["__input__"], intermediates_only=True)
    assert [tuple(m.shape[2:]) for m in maps] == [(16, 16), (8, 8), (4, 4), (4, 4)]


PARAMS = {  # timm 1.0's MetaFormer, counted on the meta device
    "poolformer_s12": 11_915_176, "poolformer_s24": 21_388_968, "poolformer_s36": 30_862_760,
    "poolformer_m36": 56_172_520, "poolformer_m48": 73_473_448,
    "poolformerv2_s12": 11_891_712, "poolformerv2_s24": 21_341_464, "poolformerv2_s36": 30_791_216,
    "poolformerv2_m36": 56_077_168, "poolformerv2_m48": 73_346_056,
    "convformer_s18": 26_774_448, "convformer_s36": 40_012_152, "convformer_m36": 57_051_640,
    "convformer_b36": 99_882_616,
    "caformer_s18": 26_341_656, "caformer_s36": 39_297_102, "caformer_m36": 56_204_878, "caformer_b36": 98_753_614,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_matches_timm(name):
    with torch.device("meta"):
        model = vitkit.create_model(name)
    assert vitkit.count_params(model) == PARAMS[name]


def test_named_config_details():
    v1 = vitkit.create_model("poolformer_s12", **TINY)
    names = dict(v1.named_parameters())
    assert "stem.norm.weight" not in names and "stages.0.blocks.0.layer_scale1.scale" in names
    assert "stages.0.blocks.0.norm1.bias" in names and "stages.0.blocks.0.mlp.fc1.bias" in names
    assert "head.fc.weight" in names and v1.input_spec.crop_pct == 0.9
    ca = vitkit.create_model("caformer_s18", **TINY)
    names = dict(ca.named_parameters())
    assert "stages.2.blocks.0.token_mixer.qkv.weight" in names and "head.fc.fc2.weight" in names
    assert "stages.2.blocks.0.norm1.bias" not in names and ca.input_spec.crop_pct == 1.0


def _hf_poolformer(tmp_path, num_labels=5):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.PoolFormerConfig(depths=[1, 2, 1, 1], hidden_sizes=[8, 16, 24, 32], num_labels=num_labels)
    hf = transformers.PoolFormerForImageClassification(cfg).eval()
    with torch.no_grad():  # perturb every parameter so zero-initialised ones (biases, layer scale) matter
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path)
    return hf


def test_hugging_face_conversion_matches_transformers(tmp_path):
    hf = _hf_poolformer(tmp_path)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    config, state_dict = from_hf(hf_config, load_file(tmp_path / "model.safetensors"))
    model = build_model(config).eval()
    model.load_state_dict(state_dict, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(model.forward_features(x), hf.poolformer(pixel_values=x).last_hidden_state,
                                   atol=1e-4, rtol=0)


def test_vitkit_load_of_hugging_face_directory(tmp_path):
    hf = _hf_poolformer(tmp_path)
    model = vitkit.load(tmp_path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)


HF_HEAD = dict(output_norm="groupnorm1", norm_before_pool=True)  # Hugging Face's head order


@pytest.mark.parametrize("num_classes", [5, 0])
def test_exports_to_transformers_and_back(tmp_path, num_classes):
    """The bench's transformers peer: PoolFormer V1 with Hugging Face's head gives our outputs, and its
    `save_pretrained` directory loads back into the same state dict."""
    pytest.importorskip("transformers")
    from vitkit.weights.hf import to_transformers

    model = vitkit.create_model("poolformer_s12", num_classes=num_classes, **TINY, **HF_HEAD).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    peer = to_transformers(model)
    assert type(peer).__name__ == "PoolFormerForImageClassification"
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(peer(pixel_values=x).logits, model(x), atol=1e-4, rtol=0)
    peer.save_pretrained(tmp_path)
    back = vitkit.load(tmp_path).state_dict()
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(v, back[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name, reason", [
    ("poolformer_s12", r"output_norm='layernorm2d', norm_before_pool=False \(timm's head order\)"),
    ("poolformerv2_s12", r"mlp_act='starrelu', mlp_bias=False, downsample_norm='layernorm2d_nobias'"),
    ("caformer_s18", r"token_mixers=\('sepconv', 'sepconv', 'attention', 'attention'\)"),
])
def test_what_transformers_cannot_express_is_refused(name, reason):
    config = vitkit.create_model(name, **TINY).config
    with pytest.raises(ValueError, match=r"^no transformers PoolFormer equals this model: it has .*" + reason):
        transformers_peer(config)


@pytest.mark.parametrize("name", NAMES)
def test_contract_on_tiny_models(name, tmp_path):
    model = vitkit.create_model(name, num_classes=5, **TINY).eval()
    spec = model.input_spec
    assert spec.img_size == (64, 64) and not spec.fixed_size and spec.size_multiple == 32
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        assert torch.equal(model.forward_head(features), logits)
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
        maps = model.forward_intermediates(x, intermediates_only=True)
        final, some = model.forward_intermediates(x, indices=[1, -1])
    assert logits.shape == (2, 5) and torch.equal(final, features) and len(some) == 2
    modules = dict(model.named_modules())
    for info, fmap in zip(model.feature_info, maps, strict=True):
        assert fmap.shape == (2, info.num_chs, math.ceil(64 / info.reduction), math.ceil(64 / info.reduction))
        assert info.module in modules
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NLC")
    ids = layer_ids(model)
    assert set(ids) == {n for n, _ in model.named_parameters()}
    head = [n for n in ids if n.startswith("head")]
    assert head and all(ids[n] == max(ids.values()) for n in head)
    assert min(ids.values()) == 0 and len(set(ids.values())) == 6  # stem, 4 stages, head
    vitkit.save(model, tmp_path / "m")
    again = vitkit.load(tmp_path / "m").eval()
    assert isinstance(again, MetaFormer) and again.config == model.config
    with torch.no_grad():
        assert torch.equal(again(x), logits)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model.get_classifier() is model.head.fc and model.config.num_classes == 3
    assert model.prune_intermediate_layers(2) == [2, 3]


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = vitkit.create_model("caformer_s18", **TINY).train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], atol=1e-5, rtol=1e-4)


def test_attention_capture():
    model = vitkit.create_model("caformer_s18", **TINY).eval()
    maps = []
    with torch.no_grad():
        plain = model(torch.ones(1, 3, 64, 64))
        for m in model.modules():
            if hasattr(m, "on_attention"):
                m.on_attention = maps.append
        hooked = model(torch.ones(1, 3, 64, 64))
    assert torch.equal(plain, hooked)
    assert [tuple(m.shape) for m in maps] == [(1, 3, 16, 16), (1, 4, 4, 4)]  # dims 24 / 32, head_dim 8


def test_other_input_sizes_and_channels():
    model = vitkit.create_model("convformer_s18", in_chans=1, drop_path_rate=0.1, **TINY).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 96, 64)).shape == (1, 1000)


@pytest.mark.parametrize("overrides, message", [
    (dict(dims=(8, 16, 24)), r"^dims \(8, 16, 24\) must have one entry per stage of depths \(1, 1, 1, 1\)$"),
    (dict(dims=(8, 16, 24, 40), head_dim=16),
     r"^dims\[2\]=24 of an attention stage must equal num_heads x head_dim \(1 x 16\); choose head_dim"),
    (dict(token_mixers="conv"), r"^token_mixers\[0\]='conv' is not one of"),
    (dict(token_mixers=("sepconv",) * 3), r"^token_mixers has 3 entries for 4 stages"),
    (dict(norm_layers="layernorm_nobias"), r"^norm_layers\[0\]='layernorm_nobias' does not fit stage 0's"),
    (dict(mlp_act="swish"), r"^mlp_act='swish' is not one of"),
    (dict(pool_size=2), r"^pool_size must be odd"),
    (dict(kernel_size=5), r"^padding=3 must be \(kernel_size - 1\) / 2 = 2\.0"),
    (dict(global_pool="token"), r"^global_pool='token' is not one of"),
    (dict(depths=(1, 0, 1, 1)), r"^depths \(1, 0, 1, 1\) and dims .* must be positive integers$"),
])
def test_bad_configs_are_explained(overrides, message):
    with pytest.raises(ValueError, match=message):
        vitkit.create_model("caformer_s18", **{**TINY, **overrides})
