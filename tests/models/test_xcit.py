"""XCiT: timm parity (fixture), the original release's layout, parameter counts, the backbone contract on a
tiny model, cross-covariance and class attention against references, config errors."""

import itertools
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import vitkit
import vitkit.models.xcit  # noqa: F401  (registers the family)
from vitkit.models import config_from_dict, config_to_dict, make_config
from vitkit.models._groups import layer_ids
from vitkit.models._protocol import Backbone, TokenSequence
from vitkit.models.xcit import Xcit
from vitkit.models.xcit.convert import from_original
from vitkit.models.xcit.export import timm_peer

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)


def tiny(**overrides) -> Xcit:
    return vitkit.create_model("xcit_nano_12_p8_224", **{**TINY, **overrides}).eval()


def _fixture(fixtures_dir):
    meta = json.loads((fixtures_dir / "timm" / "xcit_cfg_p8_32.json").read_text())
    tensors = load_file(fixtures_dir / "timm" / "xcit_cfg_p8_32.safetensors")
    ref = {k: tensors.pop(k) for k in ("__input__", "__logits__", "__features__")}
    return meta, tensors, ref


def test_reproduces_timm_fixture(fixtures_dir):
    meta, tensors, ref = _fixture(fixtures_dir)
    model = vitkit.create_model(meta["timm_model"], **meta["kwargs"]).eval()
    assert meta["timm_class"] == "Xcit" and isinstance(model, Xcit)
    model.load_state_dict(tensors, strict=True)  # timm's keys, unchanged
    with torch.no_grad():
        features = model.forward_features(ref["__input__"])
        assert features.shape == tuple(meta["features_shape"])
        torch.testing.assert_close(features, ref["__features__"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)


def test_original_release_layout_loads(fixtures_dir):
    """facebookresearch/xcit: {"model": ...}, `pos_embeder`, one packed qkv per class-attention block."""
    from vitkit.weights import load_state_dict

    meta, tensors, ref = _fixture(fixtures_dir)
    original = {}
    for key, value in tensors.items():
        key = key.replace("pos_embed.", "pos_embeder.")
        match = re.match(r"(cls_attn_blocks\.\d+\.attn)\.q\.(weight|bias)$", key)
        if match:
            prefix, kind = match.groups()
            value = torch.cat([tensors[f"{prefix}.{p}.{kind}"] for p in "qkv"])
            key = f"{prefix}.qkv.{kind}"
        elif re.match(r"cls_attn_blocks\.\d+\.attn\.[kv]\.", key):
            continue
        original[f"module.{key}"] = value
    assert sorted(from_original({"model": original})) == sorted(tensors)
    model = vitkit.create_model(meta["timm_model"], **meta["kwargs"]).eval()
    load_state_dict(model, {"model": original}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)
    # without the positional encoding its weights are dropped, as timm's checkpoint filter does
    assert not any(k.startswith("pos_embed") for k in from_original(original, use_pos_embed=False))


# exact parameter counts of timm's models (built from timm's source on the meta device; timm's results/*.csv
# list them rounded: 3.05M, 6.72M, ...); the 384 models have the same counts (no position table)
PARAMS = {
    "xcit_nano_12_p16_224": 3_053_224, "xcit_nano_12_p8_224": 3_049_016,
    "xcit_tiny_12_p16_224": 6_716_272, "xcit_tiny_12_p8_224": 6_706_504,
    "xcit_small_12_p16_224": 26_253_304, "xcit_small_12_p8_224": 26_213_032,
    "xcit_tiny_24_p16_224": 12_116_896, "xcit_tiny_24_p8_224": 12_107_128,
    "xcit_small_24_p16_224": 47_671_384, "xcit_small_24_p8_224": 47_631_112,
    "xcit_medium_24_p16_224": 84_395_752, "xcit_medium_24_p8_224": 84_323_624,
    "xcit_large_24_p16_224": 189_096_136, "xcit_large_24_p8_224": 188_932_648,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_match_timm(name):
    with torch.device("meta"):
        model = vitkit.create_model(name)
        at_384 = vitkit.create_model(name.replace("_224", "_384"))
    assert vitkit.count_params(model) == vitkit.count_params(at_384) == PARAMS[name]
    assert at_384.config.img_size == 384


def _count_by_hand(d: int, depth: int, heads: int, patch: int) -> int:
    steps = 4 if patch == 16 else 3
    widths = [3] + [d // 2 ** (steps - 1 - i) for i in range(steps)]  # d/8, d/4, d/2, d (patch 16)
    stem = sum(9 * a * b + 2 * b for a, b in itertools.pairwise(widths))  # conv (no bias) + BN affine
    pos = 64 * d + d  # 1x1 conv from 2 * 32 Fourier features
    mlp = 2 * d * 4 * d + 4 * d + d
    lpi = 2 * (9 * d + d) + 2 * d
    block = 3 * 2 * d + heads + (3 * d * d + 3 * d) + (d * d + d) + lpi + mlp + 3 * d
    class_block = 2 * 2 * d + 3 * (d * d + d) + (d * d + d) + mlp + 2 * d
    return stem + d + pos + depth * block + 2 * class_block + 2 * d + (d * 1000 + 1000)


def test_parameter_count_by_hand():
    """nano and tiny from their parts, independently of the module tree."""
    assert _count_by_hand(128, 12, 4, 16) == PARAMS["xcit_nano_12_p16_224"]
    assert _count_by_hand(128, 12, 4, 8) == PARAMS["xcit_nano_12_p8_224"]
    assert _count_by_hand(192, 12, 4, 16) == PARAMS["xcit_tiny_12_p16_224"]
    assert _count_by_hand(192, 12, 4, 8) == PARAMS["xcit_tiny_12_p8_224"]


def test_create_model_overrides_and_any_input_size():
    model = tiny(in_chans=1, drop_path_rate=0.1)
    assert model.config.in_chans == 1
    assert all(b.drop_path1.drop_prob == b.drop_path3.drop_prob == 0.1 for b in model.blocks)  # timm: one rate
    spec = model.input_spec
    assert not spec.fixed_size and spec.img_size == (32, 32) and spec.size_multiple == 8 and spec.in_chans == 1
    assert spec.crop_pct == 1.0 and spec.interpolation == "bicubic" and len(spec.mean) == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
        assert model(torch.randn(1, 1, 48, 80)).shape == (1, 5)  # any size: the encoding follows the grid
        assert model.forward_features(torch.randn(1, 1, 48, 80)).shape == (1, 1 + 6 * 10, 32)
    assert tiny(patch_size=16).patch_embed.proj[6][0].out_channels == 32  # 4 stride-2 convolutions


def test_contract_intermediates_feature_info_and_head():
    model = tiny()
    assert isinstance(model, Backbone) and not isinstance(model, TokenSequence)  # class token joins late
    assert [(f.num_chs, f.reduction, f.module) for f in model.feature_info] == [
        (32, 8, "blocks.0"), (32, 8, "blocks.1"), (32, 8, "blocks.2")]
    modules = dict(model.named_modules())
    assert all(f.module in modules for f in model.feature_info)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape for m in maps] == [(2, 32, 4, 6)] * 3
        features = model.forward_features(x)
        assert features.shape == (2, 25, 32)
        torch.testing.assert_close(final, features)
        tokens = model.forward_intermediates(x, indices=[-1], output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(tokens[0], maps[-1].flatten(2).transpose(1, 2))
        normed = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True,
                                             stop_early=True)
        torch.testing.assert_close(normed[0], model.norm(tokens[0]))
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
        assert torch.equal(model.forward_head(features), model(x))
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features[:, 0])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[3])


def test_reset_classifier_and_prune():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model(x).shape == (2, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, 32)  # pooled: the class token
        model.reset_classifier(0, "avg")
        torch.testing.assert_close(model(x), model.forward_features(x)[:, 1:].mean(1))
    assert model.config.global_pool == "avg" and model.config.num_classes == 0
    with pytest.raises(ValueError, match="global_pool='map' is not one of"):
        model.reset_classifier(3, "map")
    taken = model.prune_intermediate_layers(indices=[0, 1])
    assert taken == [0, 1] and len(model.blocks) == 2 and len(model.cls_attn_blocks) == 0
    with torch.no_grad():
        assert model(x).shape == (2, 17, 32)  # timm: no class attention, no pooling


def test_group_matcher_puts_class_attention_after_the_blocks_as_timm():
    model = tiny(depth=4)
    ids = layer_ids(model)
    assert set(ids) == {n for n, _ in model.named_parameters()}
    assert ids["cls_token"] == ids["pos_embed.token_projection.weight"] == ids["patch_embed.proj.0.0.weight"] == 0
    assert [ids[f"blocks.{i}.attn.temperature"] for i in range(4)] == [1, 2, 3, 4]
    # timm: the class-attention blocks are a group after the blocks, the final norm joins the last of them
    assert ids["cls_attn_blocks.0.attn.q.weight"] == 5
    assert ids["cls_attn_blocks.1.mlp.fc2.bias"] == ids["norm.weight"] == 6
    assert ids["head.weight"] == ids["head.bias"] == 7
    patterns = [model.group_matcher()["stem"]] + [p for p, _ in model.group_matcher()["blocks"]]
    assert all(any(re.match(p, n) for p in patterns) for n, _ in model.named_parameters() if not n.startswith("head"))
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    assert layer_ids(tiny(cls_attn_layers=0))["norm.bias"] == 3  # with the last block


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = tiny().train()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a)


def test_cross_covariance_attention_matches_reference_and_is_captured():
    model = tiny()
    attn = model.blocks[1].attn
    with torch.no_grad():
        attn.temperature.copy_(torch.tensor([0.5, 2.0]).view(2, 1, 1))
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        q, k, v = attn.qkv(x).reshape(2, 16, 3, 2, 16).permute(2, 0, 3, 1, 4)  # (B, heads, N, head_dim)
        q, k = F.normalize(q, dim=2), F.normalize(k, dim=2)  # along the tokens
        probs = (torch.einsum("bhnc,bhnd->bhcd", q, k) * attn.temperature).softmax(-1)  # channels x channels
        out = torch.einsum("bhcd,bhnd->bnhc", probs, v).reshape(2, 16, 32)
        torch.testing.assert_close(attn(x), attn.proj(out), atol=1e-5, rtol=1e-5)

    with vitkit.capture_attention(model) as maps, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(2, 2, 16, 16)] * 3 + [(2, 2, 1, 17)] * 2
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 16))
    with vitkit.capture_attention(model, grad=True) as maps:
        model(torch.randn(1, 3, 32, 32)).sum().backward()
    assert all(m.requires_grad for m in maps)
    assert all(m.on_attention is None for m in model.modules() if hasattr(m, "on_attention"))


@pytest.mark.parametrize("tokens_norm", [False, True])
def test_class_attention_block_follows_timm_arithmetic(tokens_norm):
    """Class token: attention then MLP updates; patch tokens: + gamma1 * norm1(patches), norm2 only with
    tokens_norm, then doubled by the final residual (timm's and the original code's)."""
    block = tiny(tokens_norm=tokens_norm).cls_attn_blocks[0]
    with torch.no_grad():
        block.gamma1.uniform_(0.5, 1.5)
        block.gamma2.uniform_(0.5, 1.5)
        x = torch.randn(2, 17, 32)
        n1 = block.norm1(x)
        y = x + block.gamma1 * torch.cat((block.attn(n1), n1[:, 1:]), dim=1)
        y = block.norm2(y) if tokens_norm else torch.cat((block.norm2(y[:, :1]), y[:, 1:]), dim=1)
        expected = torch.cat((y[:, :1] + block.gamma2 * block.mlp(y[:, :1]), 2 * y[:, 1:]), dim=1)
        torch.testing.assert_close(block(x), expected)


def test_fourier_encoding_matches_the_formula():
    """Feature j of a coordinate t (the 1-based row or column, scaled to (0, 2 pi]) is sin(t / 10000^(2 floor(j/2)
    / 32)) for even j, cos for odd j; rows then columns, projected by the 1x1 convolution."""
    encoding = tiny().pos_embed
    height, width = 3, 5
    j = torch.arange(32)
    dim_t = 10000 ** (2 * (j // 2) / 32)

    def features(t: torch.Tensor) -> torch.Tensor:
        angle = t[:, None] / dim_t
        return torch.where(j % 2 == 0, angle.sin(), angle.cos())

    rows = features(torch.arange(1, height + 1) / (height + 1e-6) * 2 * math.pi)  # (H, 32)
    cols = features(torch.arange(1, width + 1) / (width + 1e-6) * 2 * math.pi)  # (W, 32)
    raw = torch.cat((rows[:, None].expand(-1, width, -1), cols[None].expand(height, -1, -1)), dim=-1)
    weight, bias = encoding.token_projection.weight[:, :, 0, 0], encoding.token_projection.bias
    with torch.no_grad():
        torch.testing.assert_close(encoding(height, width), (raw.reshape(1, 15, 64) @ weight.T + bias),
                                   atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_and_config_json(tmp_path):
    model = tiny(tokens_norm=True, eta=1e-5)
    vitkit.save(model, tmp_path / "m")
    loaded = vitkit.load(tmp_path / "m").eval()
    assert isinstance(loaded, Xcit) and loaded.config == model.config
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    config = make_config("xcit", **TINY)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config


def test_timm_peer_arguments():
    from vitkit.weights.timm import config_from_timm

    config = make_config("xcit", **TINY, tokens_norm=True)
    module, cls, kwargs, build_only = timm_peer(config)
    assert (module, cls) == ("timm.models.xcit", "Xcit") and "norm_eps" not in kwargs
    assert build_only["norm_layer"](8).eps == 1e-6
    assert config_from_timm("Xcit", kwargs) == config
    assert config_from_timm("Xcit", {**kwargs, "img_size": (32, 32)}) == config


@pytest.mark.parametrize("overrides, message", [
    (dict(embed_dim=30, num_heads=4), r"^embed_dim 30 is not divisible by num_heads 4$"),
    (dict(img_size=30), r"^img_size 30 is not divisible by patch_size 8$"),
    (dict(patch_size=4), r"^patch_size must be one of \(8, 16\) \(XCiT's convolutional stem\), got 4$"),
    (dict(patch_size=16, embed_dim=4, num_heads=1), r"^embed_dim 4 is too small for patch_size 16"),
    (dict(depth=0), r"^depth must be a positive integer, got 0$"),
    (dict(cls_attn_layers=-1), r"^cls_attn_layers must be a non-negative integer, got -1$"),
    (dict(global_pool="max"), r"^global_pool='max' is not one of \('token', 'avg', ''\)$"),
    (dict(eta=None), r"^eta must be a positive number, got None$"),
    (dict(tokens_norm="yes"), r"^tokens_norm must be True or False, got 'yes'$"),
    (dict(drop_path_rate=1.0), r"^drop_path_rate must be in \[0, 1\), got 1.0$"),
    (dict(act_layer="swish"), r"^act_layer='swish' is not one of"),
])
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config("xcit", **{**TINY, **overrides})


def test_untrusted_config_bounds():
    from vitkit.weights.loading import check_config_ranges

    with pytest.raises(ValueError, match="mlp_ratio=1000.0 is out of range"):
        check_config_ranges({"architecture": "xcit", **TINY, "mlp_ratio": 1000.0}, "config.json")
    with pytest.raises(ValueError, match="cls_attn_layers=100 is out of range"):
        check_config_ranges({"architecture": "xcit", **TINY, "cls_attn_layers": 100}, "config.json")


def test_feature_maps_have_the_patch_grid():
    model = tiny(img_size=48, patch_size=16)
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 48, 48), intermediates_only=True)
    assert all(m.shape == (1, 32, math.ceil(48 / 16), 3) for m in maps)
