"""Foundation-model image towers as ViT configs (DINOv2, CLIP, SigLIP): timm parity from the reference
fixtures, and the pieces they add (QuickGELU, packed SwiGLU, attention pooling, dynamic image size)."""

import json

import pytest
import torch

import vitkit
from vitkit.layers import AttentionPoolLatent, QuickGELU, SwiGLUPacked, resample_abs_pos_embed
from vitkit.layers.pos_embed import POS_EMBED_INTERP
from vitkit.models import list_models

FIXTURES = ["vit_dinov2_reg4_p4_32", "vit_clip_quickgelu_p4_32", "vit_siglip_map_p4_32"]
NAMES = [
    "vit_small_patch14_dinov2", "vit_base_patch14_dinov2", "vit_large_patch14_dinov2", "vit_giant_patch14_dinov2",
    "vit_small_patch14_reg4_dinov2", "vit_base_patch14_reg4_dinov2", "vit_large_patch14_reg4_dinov2",
    "vit_giant_patch14_reg4_dinov2", "vit_base_patch16_clip_224", "vit_base_patch16_clip_quickgelu_224",
    "vit_base_patch16_siglip_224",
]
TINY = dict(embed_dim=32, depth=2, num_heads=2, num_classes=5)


def _fixture(fixtures_dir, name):
    from safetensors.torch import load_file

    meta = json.loads((fixtures_dir / "timm" / f"{name}.json").read_text())
    state_dict = load_file(str(fixtures_dir / "timm" / f"{name}.safetensors"))
    x, logits, features = (state_dict.pop(k) for k in ("__input__", "__logits__", "__features__"))
    return meta, state_dict, x, logits, features


@pytest.mark.parametrize("fixture", FIXTURES)
def test_timm_fixture_parity(fixtures_dir, fixture):
    meta, state_dict, x, logits, features = _fixture(fixtures_dir, fixture)
    model = vitkit.create_model(meta["timm_model"], **meta["kwargs"]).eval()
    model.load_state_dict(state_dict, strict=True)  # timm's keys, no renaming
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(model.forward_features(x), features, atol=1e-4, rtol=0)


def test_names_are_registered_with_timm_details():
    assert set(NAMES) <= set(list_models())
    c = vitkit.models.model_config("vit_small_patch14_reg4_dinov2")
    assert (c.patch_size, c.img_size, c.init_values, c.reg_tokens, c.no_embed_class) == (14, 518, 1e-5, 4, True)
    c = vitkit.models.model_config("vit_base_patch16_clip_quickgelu_224")
    assert (c.pre_norm, c.act_layer, c.norm_eps) == (True, "quick_gelu", 1e-5)
    c = vitkit.models.model_config("vit_base_patch16_siglip_224")
    assert (c.class_token, c.global_pool) == (False, "map")
    assert {vitkit.models.model_config(n).pos_embed_interp for n in NAMES} == {"timm"}  # timm's names: timm's way


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pos_embed_interp_ways(dtype):
    """Each way is plain F.interpolate: timm's antialiased bicubic in float32, transformers DINOv2's plain
    bicubic in float32, transformers CLIP/SigLIP's plain bicubic in the embedding's dtype; prefix rows kept,
    the saved grid returned as it is."""
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 16, 8).to(dtype)
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)

    def reference(antialias, in_float32):
        g = grid.float() if in_float32 else grid
        g = torch.nn.functional.interpolate(g, size=(3, 6), mode="bicubic", align_corners=False, antialias=antialias)
        return torch.cat([pos[:, :1], g.to(dtype).permute(0, 2, 3, 1).reshape(1, 18, 8)], dim=1)

    for name, args in (("timm", (True, True)), ("bicubic", (False, True)), ("bicubic_model_dtype", (False, False))):
        out = POS_EMBED_INTERP[name](pos, (3, 6), 1)
        assert out.dtype == dtype
        torch.testing.assert_close(out, reference(*args), atol=0, rtol=0)
        assert POS_EMBED_INTERP[name](pos, (4, 4), 1) is pos
    assert (POS_EMBED_INTERP["timm"](pos, (6, 6), 1) - POS_EMBED_INTERP["bicubic"](pos, (6, 6), 1)).abs().max() > 0.05


@pytest.mark.parametrize("name", NAMES)
def test_tiny_models_build_and_run(name):
    model = vitkit.create_model(name, **TINY, img_size=56 if "14" in name else 64).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *model.input_spec.img_size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_giant_uses_packed_swiglu():
    model = vitkit.create_model("vit_giant_patch14_dinov2", **TINY, img_size=28)
    mlp = model.blocks[0].mlp
    assert isinstance(mlp, SwiGLUPacked)
    hidden = int(32 * 2.66667 * 2)
    assert mlp.fc1.weight.shape == (hidden, 32) and mlp.fc2.weight.shape == (32, hidden // 2)
    x = torch.randn(3, 32)
    a, b = mlp.fc1(x).chunk(2, dim=-1)
    torch.testing.assert_close(mlp(x), mlp.fc2(torch.nn.functional.silu(a) * b))
    assert vitkit.create_model("vit_base_patch14_dinov2", **TINY, img_size=28).blocks[0].ls1.gamma.shape == (32,)


def test_quick_gelu():
    x = torch.linspace(-4, 4, 33)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))


def test_attention_pool_matches_a_manual_computation():
    torch.manual_seed(0)
    pool = AttentionPoolLatent(16, num_heads=2).eval()
    x = torch.randn(2, 5, 16)
    q = pool.q(pool.latent).reshape(1, 1, 2, 8).transpose(1, 2)
    k, v = pool.kv(x).reshape(2, 5, 2, 2, 8).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) * 8**-0.5).softmax(-1)
    y = pool.proj((attn @ v).transpose(1, 2).reshape(2, 1, 16))
    y = (y + pool.mlp(pool.norm(y)))[:, 0]
    torch.testing.assert_close(pool(x), y)


def test_siglip_head_reset_and_prune():
    model = vitkit.create_model("vit_base_patch16_siglip_224", **TINY, img_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 32)
    model.reset_classifier(3)
    assert model.attn_pool is not None and model(x).shape == (1, 3)
    model.prune_intermediate_layers(1)
    assert model.attn_pool is None and model(x).shape == (1, 4, 32)  # the 2x2 patch tokens pass through, as timm
    with pytest.raises(ValueError):
        model.reset_classifier(3, "map")
    with pytest.raises(ValueError):
        vitkit.create_model("vit_base_patch16_siglip_224", **{**TINY, "global_pool": "token"})


def test_dynamic_img_size_interpolates_the_position_embedding(fixtures_dir):
    meta, state_dict, *_ = _fixture(fixtures_dir, "vit_dinov2_reg4_p4_32")
    dynamic = vitkit.create_model(meta["timm_model"], **meta["kwargs"], dynamic_img_size=True).eval()
    dynamic.load_state_dict(state_dict)
    assert dynamic.input_spec.fixed_size is False
    x = torch.randn(2, 3, 48, 40)
    # a fixed model made for the new grid, its embedding resampled as timm's dynamic path does (antialias)
    fixed = vitkit.create_model(meta["timm_model"], **{**meta["kwargs"], "img_size": 48}).eval()
    assert dynamic.config.pos_embed_interp == "timm"
    with torch.no_grad():
        out = dynamic.forward_features(x)
        assert out.shape == (2, 5 + 12 * 10, 64)
        same = dynamic.forward_features(torch.randn(2, 3, 32, 32))
        assert same.shape == (2, 69, 64)
        maps = dynamic.forward_intermediates(x, intermediates_only=True)
        assert maps[-1].shape == (2, 64, 12, 10)
    fixed.load_state_dict({**state_dict, "pos_embed": resample_abs_pos_embed(state_dict["pos_embed"], 12,
                                                                             antialias=True)})
    square = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(dynamic.forward_features(square), fixed.forward_features(square), atol=1e-5, rtol=0)
        # pos_embed_interp="bicubic" (no antialias) is the resampling weights get when loaded for another size
        fixed.load_state_dict(fixed.adapt_state_dict(state_dict))
        dynamic.config.pos_embed_interp = "bicubic"
        torch.testing.assert_close(dynamic.forward_features(square), fixed.forward_features(square), atol=1e-5, rtol=0)
        dynamic.config.pos_embed_interp = "timm"
        assert (dynamic.forward_features(square) - fixed.forward_features(square)).abs().max() > 1e-3
    with pytest.raises(ValueError):
        vitkit.create_model(meta["timm_model"], **meta["kwargs"])(x)  # not dynamic: the fixed size is enforced


@pytest.mark.parametrize("swiglu", [False, True])
def test_transformers_dinov2_parity_at_the_native_size(tmp_path, swiglu):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                                       patch_size=4, use_swiglu_ffn=swiglu)
    peer = transformers.Dinov2Model(config).eval()
    with torch.no_grad():  # perturb so that LayerScale and the position embedding matter
        for p in peer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    peer.save_pretrained(tmp_path)
    model = vitkit.load(tmp_path).eval()
    assert model.blocks[0].mlp.__class__ is (SwiGLUPacked if swiglu else vitkit.layers.Mlp)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), peer(x).last_hidden_state, atol=1e-4, rtol=0)
