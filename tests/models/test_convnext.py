"""ConvNeXt V1 / V2: timm parity from the reference fixtures, Hugging Face parity live, and the backbone contract."""

import json
import re

import pytest
import torch

import vitkit
from vitkit.models import make_config

FIXTURES = ["convnext_tiny_cfg_32", "convnext_convmlp_32", "convnextv2_grn_32"]


def _tiny(name: str = "convnext_atto", **kwargs):
    return vitkit.create_model(name, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=5, **kwargs).eval()


@pytest.mark.parametrize("fixture", FIXTURES)
def test_timm_fixture_parity(fixtures_dir, fixture):
    from safetensors.torch import load_file

    meta = json.loads((fixtures_dir / "timm" / f"{fixture}.json").read_text())
    state_dict = load_file(str(fixtures_dir / "timm" / f"{fixture}.safetensors"))
    x, logits, features = (state_dict.pop(k) for k in ("__input__", "__logits__", "__features__"))
    # convnext_tiny_cfg_32 was built from timm's class: convnext_tiny's config is the class defaults
    model = vitkit.create_model(meta.get("timm_model", "convnext_tiny"), **meta["kwargs"]).eval()
    model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(model.forward_features(x), features, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name, expected", [("convnext_atto", 3_695_520), ("convnext_tiny", 28_589_128)])
def test_parameter_counts_match_timm(name, expected):
    with torch.device("meta"):
        model = vitkit.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_named_models_and_overrides():
    names = vitkit.list_models("convnext*")
    for size in ("atto", "femto", "pico", "nano", "tiny", "small", "base"):
        assert f"convnext_{size}" in names and f"convnextv2_{size}" in names
    model = vitkit.create_model("convnext_atto", num_classes=10, in_chans=1)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)
    with pytest.raises(ValueError, match=r"window_size.*valid: .*in_chans"):  # an argument ConvNeXt has not
        vitkit.create_model("convnext_atto", window_size=7)
    assert vitkit.create_model("convnext_atto", img_size=64).input_spec.img_size == (64, 64)
    assert make_config("convnext", depths=[1, 1, 1, 1], dims=[8, 8, 8, 8]).kernel_sizes == (7, 7, 7, 7)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_transformers_parity(tmp_path, version):
    transformers = pytest.importorskip("transformers")
    if version == "v1":
        config_cls, model_cls = transformers.ConvNextConfig, transformers.ConvNextForImageClassification
    else:
        config_cls, model_cls = transformers.ConvNextV2Config, transformers.ConvNextV2ForImageClassification
    config = config_cls(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_labels=5, image_size=64)
    peer = model_cls(config).eval()
    with torch.no_grad():  # random init leaves GRN / LayerScale near zero; perturb so every parameter matters
        for p in peer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    peer.save_pretrained(tmp_path)
    model = vitkit.load(tmp_path).eval()
    assert model.config.head_norm_eps == config.layer_norm_eps
    for size in (64, 96):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(model(x), peer(x).logits, atol=1e-4, rtol=0)


def test_transformers_backbone_without_classifier(tmp_path):
    transformers = pytest.importorskip("transformers")
    peer = transformers.ConvNextModel(transformers.ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32]))
    peer.eval().save_pretrained(tmp_path)
    model = vitkit.load(tmp_path).eval()
    assert model.num_classes == 0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), peer(x).pooler_output, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["convnext_atto", "convnext_tiny", "convnextv2_atto"])
def test_forward_intermediates_match_feature_info(name):
    model = _tiny(name)
    x = torch.randn(2, 3, 64, 64)
    final, maps = model.forward_intermediates(x)
    assert len(maps) == len(model.feature_info) == 4
    for fmap, info in zip(maps, model.feature_info, strict=True):
        assert fmap.shape == (2, info.num_chs, 64 // info.reduction, 64 // info.reduction)
        assert dict(model.named_modules())[info.module] is not None
    assert [info.reduction for info in model.feature_info] == [4, 8, 16, 32]
    torch.testing.assert_close(final, model.forward_features(x))
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    torch.testing.assert_close(last_two[0], maps[2])
    picked = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    assert [m.shape[1] for m in picked] == [8, 32]
    assert model.prune_intermediate_layers([1]) == [1] and len(model.stages) == 2


def test_input_spec_and_contract_pieces():
    model = _tiny()
    spec = model.input_spec
    assert (spec.img_size, spec.fixed_size, spec.size_multiple, spec.crop_pct) == ((224, 224), False, 32, 0.875)
    assert model.num_features == 32 and model.no_weight_decay() == set()
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 32)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
    model.reset_classifier(0, "")
    assert model(x).shape == (2, 32, 1, 1)


def test_group_matcher_covers_every_parameter_but_the_head():
    """The head is left unmatched on purpose (timm's convention: unmatched parameters form the last group)."""
    model = _tiny()
    for coarse in (False, True):
        matcher = model.group_matcher(coarse=coarse)
        patterns = [matcher["stem"]] + ([matcher["blocks"]] if coarse else [p for p, _ in matcher["blocks"]])
        for name, _ in model.named_parameters():
            matched = any(re.match(p, name) for p in patterns)
            assert matched != name.startswith("head."), name


def test_save_load_round_trip(tmp_path):
    model = _tiny("convnextv2_atto")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    vitkit.save(model, tmp_path)
    loaded = vitkit.load(tmp_path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_grad_checkpointing_and_drop_path_train():
    model = _tiny(drop_path_rate=0.1).train()
    model.set_grad_checkpointing()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_init_weights_scales_head():
    model = _tiny(head_init_scale=0.0)
    assert model.head.fc.weight.abs().max() == 0
    assert model.stages[1].downsample[1].bias.abs().max() == 0


def test_img_size_is_the_reported_input_size_and_survives_a_transformers_round_trip(tmp_path):
    """A 28x28 ConvNeXt (the zoo's) reports 28, saved through transformers too; a size that is not a multiple of
    the total stride is refused naming it; without img_size the model reports timm's 224 (any patch size)."""
    pytest.importorskip("transformers")
    from vitkit.weights.hf import to_transformers

    model = vitkit.create_model("convnext_atto", patch_size=2, depths=[1, 1], dims=[8, 16], img_size=28, in_chans=1,
                                num_classes=3)
    assert model.input_spec.img_size == (28, 28)
    to_transformers(model).save_pretrained(tmp_path / "hf")
    assert vitkit.load(tmp_path / "hf").input_spec.img_size == (28, 28)
    assert vitkit.create_model("convnext_atto", patch_size=3).input_spec.img_size == (224, 224)
    with pytest.raises(ValueError, match=r"img_size 30 is not a multiple of this ConvNeXt's total stride 32"):
        vitkit.create_model("convnext_atto", img_size=30)
