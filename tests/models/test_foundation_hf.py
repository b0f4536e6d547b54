"""transformers `save_pretrained` directories of foundation image towers (DINOv2 with registers, CLIP,
SigLIP) loaded by `vitkit.load`, compared with the transformers model at its saved image size."""

import pytest
import torch

import vitkit

transformers = pytest.importorskip("transformers")
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)


def _saved(peer, path):
    peer.eval()
    torch.manual_seed(1)
    with torch.no_grad():  # perturb so that zero-initialised parts (LayerScale, biases, tokens) matter
        for p in peer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    peer.save_pretrained(path)
    return peer


def _close(ours, theirs):
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    print(f"max abs difference {(ours - theirs).abs().max().item():.2e}")


@pytest.mark.parametrize("swiglu", [False, True])
def test_dinov2_with_registers(tmp_path, swiglu):
    config = transformers.Dinov2WithRegistersConfig(**TINY, num_register_tokens=4, use_swiglu_ffn=swiglu)
    peer = _saved(transformers.Dinov2WithRegistersModel(config), tmp_path)
    model = vitkit.load(tmp_path).eval()
    assert model.config.reg_tokens == 4 and model.config.no_embed_class
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = peer(x)
        _close(model.forward_features(x), out.last_hidden_state)
        model.reset_classifier(0)
        _close(model(x), out.pooler_output)


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_clip_vision(tmp_path, projection, act):
    config = transformers.CLIPVisionConfig(**TINY, intermediate_size=64, hidden_act=act, projection_dim=16)
    cls = transformers.CLIPVisionModelWithProjection if projection else transformers.CLIPVisionModel
    peer = _saved(cls(config), tmp_path)
    model = vitkit.load(tmp_path).eval()
    assert model.num_classes == (16 if projection else 0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = peer(x)
        features = model.forward_features(x)
        _close(features, out.last_hidden_state)
        if projection:
            pooled = peer.vision_model.post_layernorm(out.last_hidden_state[:, 0])
            _close(model.forward_head(features, pre_logits=True), pooled)
            _close(model(x), out.image_embeds)
        else:
            _close(model(x), out.pooler_output)


def test_siglip_vision(tmp_path):
    config = transformers.SiglipVisionConfig(**TINY, intermediate_size=64)
    peer = _saved(transformers.SiglipVisionModel(config), tmp_path)
    model = vitkit.load(tmp_path).eval()
    assert model.cls_token is None and model.attn_pool is not None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = peer(x)
        _close(model.forward_features(x), out.last_hidden_state)
        _close(model(x), out.pooler_output)
