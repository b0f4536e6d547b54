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
    old.update(dict(model.named_buffers()))  # relative_position_index, as old checkpoints hold it
    old["layers.1.blocks.0.attn_mask"] = torch.zeros(1, 16, 16)  # and shift masks: never state here, dropped
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


def _hf_swin(tmp_path, num_labels=5, depths=(1, 1)):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=list(depths), num_heads=[2, 4],
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


@pytest.mark.parametrize("size", [(64, 64), (48, 32)])
def test_hugging_face_directory_matches_transformers_at_another_size(tmp_path, size):
    """Saved at 32x32, run at sizes the windows divide (grids stay larger than the window, so transformers'
    per-call window clamping and timm's built one agree); two blocks per stage, so shifted windows and
    their masks for the new grid are exercised."""
    hf = _hf_swin(tmp_path, depths=(2, 2))
    loaded = vitkit.load(tmp_path).eval()
    created = vitkit.create_model("swin_tiny_patch4_window7_224", checkpoint=str(tmp_path), img_size=32, patch_size=2,
                                  embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=5).eval()
    assert loaded.config.img_size == 32 and loaded.layers[0].blocks[1].shift == 2
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = hf(pixel_values=x).logits
        hidden = hf.swin(pixel_values=x).last_hidden_state  # (B, H/4 * W/4, C) after the final norm
        for model in (loaded, created):
            torch.testing.assert_close(model(x), logits, atol=1e-4, rtol=0)
            torch.testing.assert_close(model.forward_features(x).flatten(1, 2), hidden, atol=1e-4, rtol=0)


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
    model = build_model(make_config("swin", **SMALL))  # patch 2, window 4, two stages: multiple of 16
    assert model.size_multiple() == 16
    cases = {
        (33, 33): r"^input 33x33 is not divisible by the patch size 2; use a multiple of 16 per side "
                  r"\(e\.g\. 32x32 or 48x48\)$",
        (36, 32): r"^input 36x32: stage 0 grid 18x16 is not divisible by window 4; use a multiple of 16 per side "
                  r"\(e\.g\. 32x32 or 48x32\)$",
        (40, 40): r"^input 40x40: stage 1 grid 10x10 is not divisible by window 4; use a multiple of 16 per side "
                  r"\(e\.g\. 32x32 or 48x48\)$",
    }
    for (h, w), message in cases.items():
        with pytest.raises(ValueError, match=message):
            model(torch.randn(1, 3, h, w))
    with pytest.raises(ValueError, match=r"input 24x24: stage 1 grid 6x6 is not divisible by window 4; .* "
                                         r"\(e\.g\. 16x16 or 32x32\)$"):
        model.forward_intermediates(torch.randn(1, 3, 24, 24))
    # a 7x7 window that fits stage 0 once: stage 0 accepts 28, stage 1 cannot halve its 7x7 grid
    odd = build_model(make_config("swin", img_size=56, patch_size=4, window_size=7, embed_dim=8, depths=(1, 1),
                                  num_heads=(1, 1)))
    assert odd.size_multiple() == 56
    with pytest.raises(ValueError, match=r"^input 28x28: stage 0 grid 7x7 has an odd side, which patch merging "
                                         r"cannot halve for stage 1; use a multiple of 56 per side \(e\.g\. 56x56\)$"):
        odd(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match=r"input 31x32 is not divisible by the patch size 2 \(Swin's patch "
                                         r"embedding takes non-overlapping 2x2 patches"):
        model.patch_embed(torch.randn(1, 3, 31, 32))  # on its own too: the convolution would drop a row


def test_other_input_size_equals_a_model_built_for_it():
    """Masks built at forward time for the grid seen: the model built at 32 and run at 64 is the model built
    at 64 (same weights; no window is clamped at either size), and masks stay out of the state dict."""
    torch.manual_seed(0)
    small = build_model(make_config("swin", **{**SMALL, "depths": (2, 2)})).eval()
    large = build_model(make_config("swin", **{**SMALL, "depths": (2, 2), "img_size": 64})).eval()
    large.load_state_dict(small.state_dict(), strict=True)
    assert small.state_dict().keys() == large.state_dict().keys()
    assert not any("attn_mask" in k for k in small.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(small(x), large(x), atol=1e-5, rtol=0)
        small(torch.randn(1, 3, 32, 48))
    block = small.layers[0].blocks[1]
    assert block.shift == 2 and {k[:2] for k in block._masks} == {(32, 32), (16, 24)}  # cached per grid
    assert block.attn_mask(32, 32, torch.device("cpu"), torch.float32) is block._masks[(32, 32, torch.device("cpu"),
                                                                                       torch.float32)]


def test_window_clamped_to_small_stage_as_timm():
    """A window larger than a stage's grid shrinks to the grid, and that stage is not shifted (timm); at other
    input sizes the windows and shifts stay as built, and the size multiple counts the clamped windows."""
    config = make_config("swin", img_size=32, patch_size=8, window_size=7, embed_dim=16, depths=(1, 2),
                         num_heads=(1, 2))  # grids 4 and 2: one window each
    assert config.stage_windows() == [4, 2]
    model = build_model(config).eval()
    block = model.layers[1].blocks[1]
    assert block.shift == 0 and block.attn_mask(2, 2, torch.device("cpu"), torch.float32) is None
    assert model.layers[1].blocks[0].attn.relative_position_bias_table.shape == (9, 2)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    assert model.input_spec.size_multiple == model.size_multiple() == 32  # lcm(8 * 4, 16 * 2); config's: 112
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 64, 96), intermediates_only=True)
    assert [m.shape for m in maps] == [(1, 16, 8, 12), (1, 32, 4, 6)]
    assert [b.window for s in model.layers for b in s.blocks] == [4, 2, 2] and not any(
        b.shift for s in model.layers for b in s.blocks)
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
    assert spec.img_size == (64, 64) and not spec.fixed_size and spec.crop_pct == 0.9 and spec.size_multiple == 64
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
        other = torch.randn(1, 3, 128, 192)  # another multiple of 64: NCHW maps of the new grid
        maps = model.forward_intermediates(other, intermediates_only=True)
        assert [m.shape for m in maps] == [(1, f.num_chs, 128 // f.reduction, 192 // f.reduction)
                                           for f in model.feature_info]
        torch.testing.assert_close(maps[-1], model.layers(model.patch_embed(other)).permute(0, 3, 1, 2))
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
