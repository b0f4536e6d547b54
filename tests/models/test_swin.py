"""Swin V1: timm parity (fixtures), old timm and Hugging Face layouts, the backbone contract."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.models import build_model, make_config
from vitkit.models._groups import layer_ids
from vitkit.models.swin import SwinConfig, SwinTransformer
from vitkit.models.swin.convert import from_hf
from vitkit.weights import load_state_dict

SMALL = dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), num_classes=5)


def fixture_model(fixtures_dir, name):
    """(model in eval mode, timm state dict, reference tensors) of a timm fixture."""
    meta = json.loads((fixtures_dir / "timm" / f"{name}.json").read_text())
    tensors = load_file(fixtures_dir / "timm" / f"{name}.safetensors")
    ref = {k: tensors.pop(k) for k in ("__input__", "__logits__", "__features__")}
    if "timm_model" in meta:
        model = vitkit.create_model(meta["timm_model"], **meta["kwargs"])
    else:
        assert meta["timm_class"] == "SwinTransformer"
        model = build_model(make_config("swin", **meta["kwargs"]))
    return model.eval(), tensors, ref


@pytest.mark.parametrize("name", ["swin_w4_p2_32", "swin_tiny_cfg_64"])
def test_reproduces_timm_outputs(fixtures_dir, name):
    model, state_dict, ref = fixture_model(fixtures_dir, name)
    assert not any("relative_position_index" in k or "attn_mask" in k for k in model.state_dict())
    model.load_state_dict(state_dict, strict=True)  # timm's keys, unchanged
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(ref["__input__"]), ref["__features__"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)


def test_old_timm_layout_loads(fixtures_dir):
    """timm < 0.9: patch merging at the end of the previous stage, `head.*`, buffers saved."""
    model, state_dict, ref = fixture_model(fixtures_dir, "swin_tiny_cfg_64")
    old = {}
    for key, value in state_dict.items():
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
        old[key.replace("head.fc.", "head.")] = value
    buffers = {k: v for k, v in model.named_buffers()}
    old.update(buffers)  # relative_position_index and attn_mask, as old checkpoints hold them
    assert "layers.0.downsample.reduction.weight" in old and "head.weight" in old
    load_state_dict(model, old, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)


def test_parameter_count_matches_timm():
    with torch.device("meta"):
        model = vitkit.create_model("swin_tiny_patch4_window7_224")
    assert vitkit.count_params(model) == 28_288_354
    assert {"swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224",
            "swin_base_patch4_window7_224"} <= set(vitkit.list_models("swin_*"))


def _hf_swin(tmp_path, num_labels=5):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                                  window_size=4, num_labels=num_labels)
    hf = transformers.SwinForImageClassification(cfg).eval()
    with torch.no_grad():  # perturb every parameter so zero-initialised ones (biases, bias tables) matter
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path)
    return hf


def test_hugging_face_conversion_matches_transformers(tmp_path):
    hf = _hf_swin(tmp_path)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    config, state_dict = from_hf(hf_config, load_file(tmp_path / "model.safetensors"))
    model = build_model(config).eval()
    model.load_state_dict(state_dict, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)


def test_vitkit_load_of_hugging_face_directory(tmp_path):
    hf = _hf_swin(tmp_path)
    model = vitkit.load(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)


def test_save_load_round_trip(tmp_path):
    model = vitkit.create_model("swin_tiny_patch4_window7_224", **SMALL).eval()
    vitkit.save(model, tmp_path)
    loaded = vitkit.load(tmp_path).eval()
    assert isinstance(loaded, SwinTransformer) and loaded.config == model.config
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_bad_sizes_are_explained():
    with pytest.raises(ValueError, match=r"img_size 60 must be a multiple of 32 \(patch_size 4 x 2\*\*3"):
        make_config("swin", img_size=60)
    with pytest.raises(ValueError, match=r"img_size 48 gives stage 0 a 12x12 grid, not a multiple of window_size 8"):
        make_config("swin", img_size=48, patch_size=4, window_size=8, depths=(2, 2), num_heads=(2, 4))
    model = build_model(make_config("swin", **SMALL))
    with pytest.raises(ValueError, match=r"input of shape \(1, 3, 64, 64\).*expected \(B, C, 32, 32\)"):
        model(torch.randn(1, 3, 64, 64))


def test_window_clamped_to_small_stage_as_timm():
    """A window larger than a stage's grid shrinks to the grid, and that stage is not shifted (timm)."""
    config = make_config("swin", img_size=32, patch_size=8, window_size=7, embed_dim=16, depths=(1, 2),
                         num_heads=(1, 2))  # grids 4 and 2: one window each
    assert config.stage_windows() == [4, 2]
    model = build_model(config).eval()
    assert model.layers[1].blocks[1].shift == 0 and model.layers[1].blocks[1].attn_mask is None
    assert model.layers[1].blocks[0].attn.relative_position_bias_table.shape == (9, 2)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    with pytest.raises(ValueError, match="img_size 64 gives stage 0 a 16x16 grid, not a multiple of window_size 7"):
        make_config("swin", img_size=64, window_size=7, embed_dim=16, depths=(1, 2, 2), num_heads=(1, 2, 4))


def test_contract_intermediates_and_feature_info():
    model = vitkit.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4, embed_dim=16,
                                depths=(1, 1, 2), num_heads=(1, 2, 4), num_classes=3).eval()
    assert [(f.num_chs, f.reduction, f.module) for f in model.feature_info] == [
        (16, 4, "layers.0"), (32, 8, "layers.1"), (64, 16, "layers.2")]
    modules = dict(model.named_modules())
    assert all(f.module in modules for f in model.feature_info)
    spec = model.input_spec
    assert spec.img_size == (64, 64) and spec.fixed_size and spec.crop_pct == 0.9 and spec.size_multiple == 64
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape for m in maps] == [(2, f.num_chs, 64 // f.reduction, 64 // f.reduction)
                                           for f in model.feature_info]
        torch.testing.assert_close(final, model.forward_features(x))
        nhwc = model.forward_intermediates(x, indices=[-1], norm=True, output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(nhwc[0], final)
        assert model.forward_head(final, pre_logits=True).shape == (2, 64)
        assert model.num_features == 64 and model.num_classes == 3
        taken = model.prune_intermediate_layers(indices=2)
        assert taken == [1, 2] and len(model.layers) == 3 and model.num_classes == 0


def test_reset_classifier_no_weight_decay_and_groups():
    model = vitkit.create_model("swin_tiny_patch4_window7_224", **SMALL)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    model.reset_classifier(0, global_pool="")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 8, 8, 32)
    with pytest.raises(ValueError, match="global_pool='token'"):
        model.reset_classifier(3, global_pool="token")
    nwd = model.no_weight_decay()
    assert nwd and all("relative_position_bias_table" in n for n in nwd)
    assert nwd == {n for n, _ in model.named_parameters() if n.endswith("relative_position_bias_table")}
    model.reset_classifier(4)
    fine = model.group_matcher()
    patterns = [fine["stem"]] + [p for p, _ in fine["blocks"]]
    assert all(any(re.match(p, n) for p in patterns) for n, _ in model.named_parameters() if not n.startswith("head."))
    coarse = model.group_matcher(coarse=True)  # as timm: stages only; the final norm joins the head group
    unmatched = {n for n, _ in model.named_parameters() if not re.match(coarse["stem"], n)
                 and not re.match(coarse["blocks"], n)}
    assert unmatched == {"norm.weight", "norm.bias", "head.fc.weight", "head.fc.bias"}
    ids = layer_ids(model)  # stem 0; stage 0 blocks 1, 2; stage 1 (merging with block 0) 3, 4 + norm; head 5
    assert ids["patch_embed.proj.weight"] == 0 and ids["layers.0.blocks.1.norm1.weight"] == 2
    assert ids["layers.1.downsample.reduction.weight"] == ids["layers.1.blocks.0.attn.qkv.weight"] == 3
    assert ids["norm.weight"] == ids["layers.1.blocks.1.mlp.fc2.weight"] == 4 and ids["head.fc.weight"] == 5


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = vitkit.create_model("swin_tiny_patch4_window7_224", **SMALL, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a)


def test_config_json_round_trip():
    config = make_config("swin", **SMALL)
    data = json.loads(json.dumps(vitkit.models.config_to_dict(config)))
    assert vitkit.models.config_from_dict(data) == config and isinstance(config, SwinConfig)
