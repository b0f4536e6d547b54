"""Live parity with Hugging Face transformers: same weights, same outputs."""

import pytest
import torch

import vitkit

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency: pip install -e .[dev]")

SMALL = dict(image_size=32, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=2,
             num_attention_heads=4, intermediate_size=128, num_labels=5)


def make_hf(model_cls, config_cls, **overrides):
    hf = model_cls(config_cls(**{**SMALL, **overrides})).eval()
    with torch.no_grad():  # random init leaves zeros (biases, tokens) that would hide wiring mistakes
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf


@pytest.mark.parametrize(
    "model_cls, config_cls, overrides",
    [
        ("ViTForImageClassification", "ViTConfig", {}),
        ("ViTForImageClassification", "ViTConfig", {"num_channels": 1, "qkv_bias": False}),
        ("DeiTForImageClassificationWithTeacher", "DeiTConfig", {}),
    ],
)
def test_hf_directory_loads_with_same_outputs(tmp_path, model_cls, config_cls, overrides):
    hf = make_hf(getattr(transformers, model_cls), getattr(transformers, config_cls), **overrides)
    hf.save_pretrained(tmp_path)
    x = torch.randn(2, hf.config.num_channels, 32, 32)
    with torch.no_grad():
        reference = hf(pixel_values=x).logits
        model = vitkit.load(tmp_path).eval()
        torch.testing.assert_close(model(x), reference, atol=1e-4, rtol=0)
        # the same directory as create_model's checkpoint, into a matching named config
        named = vitkit.create_model(
            "deit_pico_distilled_patch4_32" if "Teacher" in model_cls else "vit_pico_patch4_32",
            embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5, norm_eps=1e-12,
            in_chans=hf.config.num_channels, qkv_bias=hf.config.qkv_bias, checkpoint=str(tmp_path),
        ).eval()
        torch.testing.assert_close(named(x), reference, atol=1e-4, rtol=0)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 64)


@pytest.mark.parametrize("name", ["vit_pico_patch4_32", "deit_pico_distilled_patch4_32"])
def test_to_transformers_gives_the_peer_with_our_weights(name):
    from vitkit.weights.hf import to_transformers

    model = vitkit.create_model(name, num_classes=5, act_layer="gelu_tanh").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    peer = to_transformers(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(peer(pixel_values=x).logits, model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("overrides, named", [
    ({"global_pool": "avg", "class_token": False}, "global_pool='avg'"),
    ({"reg_tokens": 4}, "reg_tokens"),
    ({"init_values": 1e-5, "qk_norm": True}, "layer scale"),  # layer scale alone: DINOv2 (test_family_peers.py)
])
def test_to_transformers_names_what_has_no_equivalent(overrides, named):
    from vitkit.weights.hf import transformers_config

    with pytest.raises(ValueError, match=f"no transformers ViT/DeiT equals this model: it has .*{named}"):
        transformers_config(vitkit.create_model("vit_pico_patch4_32", **overrides).config)


def test_layer_scale_vit_is_transformers_dinov2_with_our_weights():
    """A plain ViT with layer scale is transformers' DINOv2; its head is DINOv2's classifier with zero
    weights on the mean patch token."""
    from vitkit.weights.hf import to_transformers

    model = vitkit.create_model("vit_pico_patch4_32", num_classes=5, init_values=1e-5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    peer = to_transformers(model)
    assert type(peer).__name__ == "Dinov2ForImageClassification"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(peer(pixel_values=x).logits, model(x), atol=1e-5, rtol=0)
