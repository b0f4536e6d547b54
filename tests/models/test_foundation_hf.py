"""transformers `save_pretrained` directories of foundation image towers (DINOv2 with registers, CLIP,
SigLIP) loaded by `vitkit.load`, compared with the transformers model at its saved image size and, through
`dynamic_img_size` with transformers' own position-embedding interpolation (`pos_embed_interp`), at others."""

import json

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


def test_siglip_vision_without_head(tmp_path):
    """`vision_use_head=False`: transformers returns the normed tokens and no pooled output; vitkit builds no
    attention pool and no pooling (global_pool=''), so `model(x)` is `last_hidden_state`."""
    config = transformers.SiglipVisionConfig(**TINY, intermediate_size=64, vision_use_head=False)
    peer = _saved(transformers.SiglipVisionModel(config), tmp_path)
    model = vitkit.load(tmp_path).eval()
    assert model.attn_pool is None and model.global_pool == "" and model.num_classes == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = peer(x)
        assert out.pooler_output is None
        _close(model.forward_features(x), out.last_hidden_state)
        _close(model(x), out.last_hidden_state)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf_config, "vision_use_head": True}))
    with pytest.raises(ValueError, match="vision_use_head=True, but the weights lack"):
        vitkit.load(tmp_path)


# ----- other input sizes: transformers interpolates the position embedding, and so does vitkit, the same way ------
# saved at 32 with patch 8 (a 4x4 grid): larger, non-square (both ways) and smaller grids
OTHER_SIZES = [(48, 48), (32, 48), (56, 40), (24, 24)]
PEERS = {  # kind: (transformers class, config class, config arguments, vitkit's pos_embed_interp)
    "dinov2": ("Dinov2Model", "Dinov2Config", {}, "bicubic"),
    "dinov2_swiglu": ("Dinov2Model", "Dinov2Config", {"use_swiglu_ffn": True}, "bicubic"),
    "dinov2_reg": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", {"num_register_tokens": 4}, "timm"),
    "dinov2_reg_swiglu": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig",
                          {"num_register_tokens": 4, "use_swiglu_ffn": True}, "timm"),
    "clip": ("CLIPVisionModel", "CLIPVisionConfig", {"intermediate_size": 64}, "bicubic_model_dtype"),
    "clip_projection": ("CLIPVisionModelWithProjection", "CLIPVisionConfig",
                        {"intermediate_size": 64, "projection_dim": 16}, "bicubic_model_dtype"),
    "siglip": ("SiglipVisionModel", "SiglipVisionConfig", {"intermediate_size": 64}, "bicubic_model_dtype"),
    "siglip_no_head": ("SiglipVisionModel", "SiglipVisionConfig", {"intermediate_size": 64, "vision_use_head": False},
                       "bicubic_model_dtype"),
}


@pytest.mark.parametrize("kind", list(PEERS))
def test_other_input_sizes_match_transformers(tmp_path, kind):
    """At sizes other than the saved one, last_hidden_state and the pooled output (image_embeds with the
    projection) equal transformers': DINOv2 interpolates on every input, CLIP and SigLIP when called with
    `interpolate_pos_encoding=True`, which vitkit's converted towers always do."""
    model_cls, config_cls, kwargs, interp = PEERS[kind]
    peer = _saved(getattr(transformers, model_cls)(getattr(transformers, config_cls)(**TINY, **kwargs)), tmp_path)
    model = vitkit.load(tmp_path).eval()
    assert model.config.dynamic_img_size and model.config.pos_embed_interp == interp
    call = {} if kind.startswith("dinov2") else {"interpolate_pos_encoding": True}
    for size in OTHER_SIZES:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            out = peer(x, **call)
            features = model.forward_features(x)
            _close(features, out.last_hidden_state)
            if kind == "clip_projection":
                _close(model.forward_head(features, pre_logits=True),
                       peer.vision_model.post_layernorm(out.last_hidden_state[:, 0]))
                _close(model(x), out.image_embeds)
            elif out.pooler_output is not None:
                _close(model.forward_head(features, pre_logits=True), out.pooler_output)
            else:
                _close(model(x), out.last_hidden_state)


def test_dinov2_other_size_needs_its_own_interpolation(tmp_path):
    """The check above can fail: timm's antialiased resampling, used on Dinov2Model's embedding, is far off."""
    peer = _saved(transformers.Dinov2Model(transformers.Dinov2Config(**TINY)), tmp_path)
    model = vitkit.load(tmp_path).eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        expected = peer(x).last_hidden_state
        _close(model.forward_features(x), expected)
        model.config.pos_embed_interp = "timm"
        assert (model.forward_features(x) - expected).abs().max() > 1e-2


def test_create_model_with_a_transformers_checkpoint_at_another_size(tmp_path):
    """A registered name built to the checkpoint's shape, with `checkpoint=` a Dinov2Model directory and
    pos_embed_interp='bicubic', runs other sizes as transformers does."""
    peer = _saved(transformers.Dinov2Model(transformers.Dinov2Config(**TINY)), tmp_path)
    model = vitkit.create_model(
        "vit_small_patch14_dinov2", checkpoint=tmp_path, img_size=32, patch_size=8, embed_dim=32, depth=2,
        num_heads=2, num_classes=0, init_values=1.0, dynamic_img_size=True, pos_embed_interp="bicubic",
    ).eval()
    x = torch.randn(2, 3, 56, 40)
    with torch.no_grad():
        out = peer(x)
        _close(model.forward_features(x), out.last_hidden_state)
        _close(model(x), out.pooler_output)


def test_pos_embed_interp_round_trips_through_save(tmp_path):
    """`vitkit.save` -> `vitkit.load` keeps pos_embed_interp (and the outputs at another size); a config.json
    saved before the field existed loads with timm's way; an unknown way is refused, naming the valid ones."""
    peer = _saved(transformers.Dinov2Model(transformers.Dinov2Config(**TINY)), tmp_path / "hf")
    model = vitkit.load(tmp_path / "hf").eval()
    vitkit.save(model, tmp_path / "ours")
    again = vitkit.load(tmp_path / "ours").eval()
    assert again.config.pos_embed_interp == "bicubic" and again.config.dynamic_img_size
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(again.forward_features(x), peer(x).last_hidden_state, atol=1e-4, rtol=0)

    path = tmp_path / "ours" / "config.json"
    saved = json.loads(path.read_text())
    del saved["config"]["pos_embed_interp"]  # as written by a vitkit without the field
    path.write_text(json.dumps(saved))
    assert vitkit.load(tmp_path / "ours").config.pos_embed_interp == "timm"

    for bad in ("nearest", ["bicubic"], 3):
        saved["config"]["pos_embed_interp"] = bad
        path.write_text(json.dumps(saved))
        with pytest.raises(ValueError, match="pos_embed_interp.*bicubic_model_dtype"):
            vitkit.load(tmp_path / "ours")
    with pytest.raises(ValueError, match="pos_embed_interp='nearest' is not one of"):
        vitkit.models.model_config("vit_small_patch14_dinov2", pos_embed_interp="nearest")
