"""The reverse exporters (vitkit -> transformers) of every family transformers has, and the timm peers'
arguments: the bench's peers must be the same model with the same weights.

Each exporter is checked three ways on a tiny random model with every parameter perturbed (zero-initialised
biases, layer scales and GRN would hide wiring mistakes): transformers' model from `to_transformers` gives
vitkit's outputs; its `save_pretrained` directory loads back (`vitkit.load`, the forward converter) into the
same state dict; and what transformers cannot express is refused with the reason."""

import pytest
import torch

import vitkit

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency: pip install -e .[dev]")

CONVNEXT = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
SWIN = dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4))
TOWER = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _tiny(name, keep_zero=(), **overrides):
    model = vitkit.create_model(name, **overrides).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key not in keep_zero:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _peer(model):
    from vitkit.weights.hf import to_transformers

    return to_transformers(model)


def _close(ours, theirs):
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def _assert_round_trip(model, peer, tmp_path):
    """transformers' directory of the exported model, read by vitkit's forward converter: the same weights."""
    peer.save_pretrained(tmp_path)
    back = vitkit.load(tmp_path)
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


# ----- ConvNeXt ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [("convnext_tiny", "ConvNextForImageClassification"),
                                       ("convnext_atto", "ConvNextForImageClassification"),  # conv_mlp
                                       ("convnextv2_tiny", "ConvNextV2ForImageClassification"),
                                       ("convnextv2_atto", "ConvNextV2ForImageClassification")])
def test_convnext_exports_to_its_transformers_classifier(name, cls, tmp_path):
    model = _tiny(name, num_classes=5, **CONVNEXT)
    peer = _peer(model)
    assert type(peer).__name__ == cls
    for size in (64, 96):  # any size the strides divide, as both take
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            out = peer(pixel_values=x, output_hidden_states=True)
            _close(model(x), out.logits)
            _close(model.forward_features(x), out.hidden_states[-1])
    if not model.config.conv_mlp:  # conv_mlp's 1x1 convolutions come back as the equal linear layers
        _assert_round_trip(model, peer, tmp_path)


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_tiny"])
def test_convnext_without_classifier_is_the_base_model(name, tmp_path):
    model = _tiny(name, num_classes=0, **CONVNEXT)
    peer = _peer(model)
    assert type(peer).__name__ in ("ConvNextModel", "ConvNextV2Model")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = peer(pixel_values=x)
        _close(model(x), out.pooler_output)  # pooled and normalised: vitkit's pre-logits
        _close(model.forward_features(x), out.last_hidden_state)
    _assert_round_trip(model, peer, tmp_path)


@pytest.mark.parametrize("overrides, named", [
    ({"kernel_sizes": 5}, r"kernel_sizes=\(5, 5, 5, 5\)"),
    ({"global_pool": "max"}, "global_pool='max'"),
    ({"norm_eps": 1e-5}, "norm_eps=1e-05"),
    ({"use_grn": True}, "GRN with layer scale"),
])
def test_convnext_that_transformers_cannot_build_is_refused(overrides, named):
    from vitkit.weights.hf import transformers_config

    with pytest.raises(ValueError, match=f"no transformers ConvNeXt equals this model: it has .*{named}"):
        transformers_config(vitkit.models.model_config("convnext_tiny", **overrides))


# ----- Swin ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [5, 0])
def test_swin_exports_to_its_transformers_model(num_classes, tmp_path):
    model = _tiny("swin_tiny_patch4_window7_224", num_classes=num_classes, **SWIN)
    peer = _peer(model)
    assert type(peer).__name__ == ("SwinForImageClassification" if num_classes else "SwinModel")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = peer(pixel_values=x)
        hidden = (peer.swin if num_classes else peer)(pixel_values=x)
        _close(model(x), out.logits if num_classes else out.pooler_output)
        _close(model.forward_features(x).flatten(1, 2), hidden.last_hidden_state)
    _assert_round_trip(model, peer, tmp_path)
    assert vitkit.load(tmp_path).config == model.config


@pytest.mark.parametrize("overrides, named", [
    ({"act_layer": "relu"}, "act_layer='relu'"),
    ({"img_size": 32, "patch_size": 8, "embed_dim": 16, "depths": (1, 2), "num_heads": (1, 2)},
     "window_size 7 larger than stage 0's grid"),
    ({"head_dim": 16}, "head_dim=16"),
])
def test_swin_that_transformers_cannot_build_is_refused(overrides, named):
    from vitkit.weights.hf import transformers_config

    with pytest.raises(ValueError, match=f"no transformers Swin equals this model: it has .*{named}"):
        transformers_config(vitkit.models.model_config("swin_tiny_patch4_window7_224", **overrides))


# ----- ViT family: DINOv2, CLIP, SigLIP ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, overrides, cls", [
    ("vit_small_patch14_dinov2", {}, "Dinov2Model"),
    ("vit_small_patch14_reg4_dinov2", {}, "Dinov2WithRegistersModel"),
    ("vit_giant_patch14_dinov2", {"embed_dim": 48}, "Dinov2Model"),  # packed SwiGLU: 128 hidden features
    ("vit_giant_patch14_reg4_dinov2", {"mlp_ratio": 5.5}, "Dinov2WithRegistersModel"),  # SwiGLU 88: not 2/3 of 4x
])
def test_dinov2_exports_to_its_transformers_tower(name, overrides, cls, tmp_path):
    model = _tiny(name, **{**TOWER, "num_classes": 0, **overrides})
    peer = _peer(model)
    assert type(peer).__name__ == cls
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = peer(pixel_values=x)
        _close(model.forward_features(x), out.last_hidden_state)
        _close(model(x), out.pooler_output)
    _assert_round_trip(model, peer, tmp_path)


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_dinov2_with_a_head_is_transformers_classifier_reading_the_class_token_only(name):
    """transformers' DINOv2 classifier reads [class token, mean patch token]: timm's head (class token only)
    is that classifier with zero weights on the mean."""
    model = _tiny(name, **TOWER, num_classes=5)
    peer = _peer(model)
    assert type(peer).__name__.endswith("ForImageClassification")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(model(x), peer(pixel_values=x).logits)


@pytest.mark.parametrize("name, overrides", [
    ("vit_base_patch16_clip_quickgelu_224", {"fc_norm": True}),  # as clip_from_hf builds it
    ("vit_base_patch16_clip_224", {}),  # timm's layout: the final norm over every token
])
@pytest.mark.parametrize("num_classes", [16, 0])
def test_clip_exports_to_its_transformers_tower(name, overrides, num_classes, tmp_path):
    model = _tiny(name, keep_zero={"head.bias"}, **TOWER, num_classes=num_classes, **overrides)
    peer = _peer(model)
    assert type(peer).__name__ == ("CLIPVisionModelWithProjection" if num_classes else "CLIPVisionModel")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = peer(pixel_values=x)
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        if num_classes:
            _close(model(x), out.image_embeds)
            _close(pooled, peer.vision_model.post_layernorm(out.last_hidden_state[:, 0]))
        else:
            _close(model(x), out.pooler_output)
        if model.config.fc_norm:  # CLIP's last_hidden_state is not normalised; timm's layout normalises it
            _close(features, out.last_hidden_state)
    if model.config.fc_norm:
        _assert_round_trip(model, peer, tmp_path)


def test_clip_head_with_a_bias_is_refused():
    model = _tiny("vit_base_patch16_clip_224", **TOWER, num_classes=16)
    with pytest.raises(ValueError, match="non-zero bias, and CLIP's visual projection has none"):
        _peer(model)


def test_siglip_exports_to_its_transformers_tower(tmp_path):
    model = _tiny("vit_base_patch16_siglip_224", **TOWER, num_classes=0)
    peer = _peer(model)
    assert type(peer).__name__ == "SiglipVisionModel"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = peer(pixel_values=x)
        _close(model.forward_features(x), out.last_hidden_state)
        _close(model(x), out.pooler_output)
    _assert_round_trip(model, peer, tmp_path)


@pytest.mark.parametrize("name, overrides, named", [
    ("vit_base_patch16_siglip_224", {}, r"SiglipVisionModel .*: it has a 1000-class head .*num_classes=0"),
    ("vit_small_patch14_dinov2", {"qk_norm": True}, r"Dinov2Model .*: it has qk_norm"),
    ("vit_small_patch14_dinov2", {"mlp_ratio": 3.3}, r"Dinov2Model .*: it has an MLP width 1267 no integer"),
    ("vit_base_patch16_clip_224", {"global_pool": "avg"}, r"CLIPVisionModel .*: it has global_pool='avg'"),
])
def test_foundation_tower_that_transformers_cannot_build_says_why(name, overrides, named):
    from vitkit.weights.hf import transformers_config

    with pytest.raises(ValueError, match=f"^no transformers ViT/DeiT equals this model: it has .*; nor does "
                                         f"transformers' {named}"):
        transformers_config(vitkit.models.model_config(name, **overrides))


# ----- timm peers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["convnext_atto", "convnext_tiny", "convnextv2_nano", "convnextv2_base",
                                  "swin_tiny_patch4_window7_224", "swin_base_patch4_window7_224"])
@pytest.mark.parametrize("overrides", [{}, {"num_classes": 7, "in_chans": 1, "drop_path_rate": 0.05}])
def test_timm_arguments_round_trip_for_the_bench_peer(name, overrides):
    """`vitkit bench --peers timm` builds timm's class from these arguments (timm does not import here):
    read back as timm's arguments they must give the same config."""
    from vitkit.weights.timm import config_from_timm, timm_kwargs_from

    config = vitkit.models.model_config(name, **overrides)
    timm_class, kwargs = timm_kwargs_from(config)
    assert timm_class == ("ConvNeXt" if name.startswith("convnext") else "SwinTransformer")
    assert "head_norm_eps" not in kwargs  # vitkit's own: timm's ConvNeXt has no such argument
    assert config_from_timm(timm_class, kwargs) == config


def test_swin_activation_goes_to_timm_only_when_not_its_default():
    from vitkit.weights.timm import config_from_timm, timm_kwargs_from

    config = vitkit.models.model_config("swin_tiny_patch4_window7_224", act_layer="gelu_tanh")
    _, kwargs = timm_kwargs_from(config)
    assert kwargs["act_layer"] == "gelu_tanh" and config_from_timm("SwinTransformer", kwargs) == config
    assert "act_layer" not in timm_kwargs_from(vitkit.models.model_config("swin_tiny_patch4_window7_224"))[1]


def test_convnext_head_norm_eps_timm_has_not_is_refused():
    from vitkit.weights.timm import timm_kwargs_from

    with pytest.raises(ValueError, match=r"no timm ConvNeXt equals this model: its head norm eps "
                                         r"\(head_norm_eps=1e-12.*differs from norm_eps=1e-06"):
        timm_kwargs_from(vitkit.models.model_config("convnext_tiny", head_norm_eps=1e-12))
    # the same eps as the other norms is timm's model
    _, kwargs = timm_kwargs_from(vitkit.models.model_config("convnext_tiny", head_norm_eps=1e-6))
    assert "head_norm_eps" not in kwargs
