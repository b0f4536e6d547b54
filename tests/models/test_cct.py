"""CCT: parameter counts (the official code's, and by hand), parity with the official code (outputs equal to
1e-5 with copied weights, when its source is at hand), the backbone contract on a tiny model, the token
sequence tools, official checkpoint names, config errors and a training smoke run."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit
import vitkit.models.cct  # noqa: F401  (registers the family)
from vitkit.models import config_from_dict, config_to_dict, make_config
from vitkit.models._groups import layer_ids
from vitkit.models._protocol import Backbone, TokenSequence
from vitkit.models.cct import Cct
from vitkit.models.cct.convert import from_original
from vitkit.models.cct.model import sinusoidal_embedding

TINY = dict(embed_dim=32, depth=3, num_heads=2, conv_width=8, num_classes=5)


def tiny(name: str = "cct_7_3x2_32", **overrides) -> Cct:
    return vitkit.create_model(name, **{**TINY, **overrides}).eval()


# ----- parameter counts ------------------------------------------------------------------------
# exact counts of the official constructors (src/cct.py, learnable position embedding, their default heads);
# the paper / README: 0.28M for CCT-2/3x2 and 3.76M for CCT-7/3x1 on CIFAR-10
PARAMS = {
    "cct_2_3x2_32": 283_723, "cct_4_3x2_32": 482_123, "cct_6_3x1_32": 3_233_803, "cct_6_3x2_32": 3_326_923,
    "cct_7_3x1_32": 3_760_139, "cct_7_3x2_32": 3_853_259, "cct_7_7x2_224": 4_573_735,
    "cct_14_7x2_224": 22_367_273, "cct_14_7x2_384": 22_513_193,
    # vitkit's 28x28 one-channel variants (docstring of configs.py)
    "cct_2_3x2_28": 280_651, "cct_4_3x2_28": 479_051, "cct_6_3x2_28": 3_321_931, "cct_7_3x1_28": 3_740_171,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_match_the_official_code(name):
    with torch.device("meta"):
        model = vitkit.create_model(name)
    assert vitkit.count_params(model) == PARAMS[name]


def test_parameter_counts_of_the_paper_and_by_hand():
    assert round(PARAMS["cct_2_3x2_32"] / 1e6, 2) == 0.28 and round(PARAMS["cct_7_3x1_32"] / 1e6, 2) == 3.76
    d, tokens, classes = 256, 16 * 16, 10  # CCT-7/3x1: one 3x3 conv (no bias), 32 -> 16 after the max-pool
    block = 2 * 2 * d + 3 * d * d + (d * d + d) + (d * 2 * d + 2 * d) + (2 * d * d + d)  # no qkv bias, mlp_ratio 2
    total = 3 * 9 * d + tokens * d + 7 * block + 2 * d + (d + 1) + (d * classes + classes)
    assert total == PARAMS["cct_7_3x1_32"]
    # the sinusoidal table is a buffer here (a frozen parameter in the official state dict)
    with torch.device("meta"):
        sine = vitkit.create_model("cct_7_3x1_32_sine")
    assert vitkit.count_params(sine) == total - tokens * d


# ----- parity with the official code -------------------------------------------------------------
CCT_FIXTURES = ("cct_2_3x2_32", "cct_sine_p28_gray", "cct_7x2_224_small")


@pytest.mark.parametrize("name", CCT_FIXTURES)
def test_matches_the_official_code(fixtures_dir, name):
    """Fixtures made with the official code (tests/fixtures/cct/make_fixtures.py): its state dict, under its
    own key names, loads strictly and gives its logits and sequence-pooled features."""
    meta = json.loads((fixtures_dir / "cct" / f"{name}.json").read_text())
    tensors = load_file(fixtures_dir / "cct" / f"{name}.safetensors")
    ref = {k: tensors.pop(k) for k in ("__input__", "__logits__", "__pooled__")}
    ours = vitkit.create_model(meta["vitkit_model"], **meta["kwargs"]).eval()
    vitkit.weights.load_state_dict(ours, tensors, strict=True)
    with torch.no_grad():
        features = ours.forward_features(ref["__input__"])
        torch.testing.assert_close(ours.forward_head(features), ref["__logits__"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.forward_head(features, pre_logits=True), ref["__pooled__"], atol=1e-5,
                                   rtol=1e-5)


# ----- official checkpoint names -----------------------------------------------------------------
def _to_official(key: str) -> str:
    """This model's name -> the official one (the inverse of convert.py, written out independently)."""
    renames = [("blocks.{}.norm1.", "pre_norm."), ("blocks.{}.norm2.", "norm1."), ("blocks.{}.attn.", "self_attn."),
               ("blocks.{}.mlp.fc1.", "linear1."), ("blocks.{}.mlp.fc2.", "linear2.")]
    if key.startswith("tokenizer."):
        return key
    match = re.match(r"blocks\.(\d+)\.", key)
    if match:
        for ours, theirs in renames:
            prefix = ours.format(match.group(1))
            if key.startswith(prefix):
                return f"classifier.blocks.{match.group(1)}.{theirs}{key[len(prefix):]}"
    return "classifier." + {"pos_embed": "positional_emb"}.get(key, key.replace("head.", "fc."))


def test_official_checkpoint_names_convert():
    model = tiny()
    state = model.state_dict()
    official = {"model": {f"module.{_to_official(k)}": v for k, v in state.items()}}
    assert "module.classifier.blocks.0.pre_norm.weight" in official["model"]
    assert "module.classifier.fc.bias" in official["model"] and "module.classifier.attention_pool.weight" in \
        official["model"]
    converted = from_original(official)
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], v) for k, v in state.items())
    assert from_original(state).keys() == state.keys()  # already ours: unchanged
    again = tiny()
    vitkit.weights.load_state_dict(again, official, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


# ----- the backbone contract and model API ---------------------------------------------------------
def test_create_model_overrides_and_input_spec():
    model = tiny(in_chans=1, drop_path_rate=0.1, img_size=24)
    assert model.config.in_chans == 1 and model.grid_size == 6 and model.pos_embed.shape == (1, 36, 32)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0 for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1])  # linear in depth, as the official stochastic depth
    spec = model.input_spec
    assert not spec.fixed_size and spec.img_size == (24, 24) and spec.size_multiple == 4 and spec.in_chans == 1
    assert len(spec.mean) == 1 and spec.crop_pct == 1.0  # CIFAR's mean averaged over the one channel
    assert model(torch.randn(2, 1, 24, 24)).shape == (2, 5)
    cifar = vitkit.create_model("cct_2_3x2_32").input_spec
    assert (cifar.mean, cifar.std, cifar.crop_pct) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 1.0)
    fashion = vitkit.create_model("cct_7_3x1_28", **TINY)
    assert fashion.input_spec.mean == (0.286,) and fashion.input_spec.std == (0.353,)
    assert fashion.input_spec.in_chans == 1 and fashion.grid_size == 14
    with pytest.raises(ValueError, match="expected 1 input channel"):
        fashion(torch.randn(1, 3, 28, 28))


@pytest.mark.parametrize("pos_embed_type", ["learnable", "sine", "none"])
def test_other_input_sizes_work(pos_embed_type):
    model = tiny(pos_embed_type=pos_embed_type)
    with torch.no_grad():
        out = model.forward_intermediates(torch.randn(2, 3, 48, 40), indices=1, intermediates_only=True)
        assert out[0].shape == (2, 32, 12, 10)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
        x = torch.randn(1, 3, 32, 32)
        assert torch.equal(model.forward_features(x), model.forward_features(x))
    if pos_embed_type == "sine":
        torch.testing.assert_close(model._pos_embed_for((12, 10)), sinusoidal_embedding(120, 32))
        assert "pos_embed" not in model.state_dict()
    if pos_embed_type == "learnable":  # the learned grid, resampled bicubically; equal at its own size
        assert torch.equal(model._pos_embed_for((8, 8)), model.pos_embed)
        assert model._pos_embed_for((12, 10)).shape == (1, 120, 32)


def test_contract_intermediates_feature_info_and_head():
    model = tiny()
    assert isinstance(model, Backbone) and isinstance(model, TokenSequence) and model.num_prefix_tokens == 0
    assert [(f.num_chs, f.reduction, f.module) for f in model.feature_info] == [
        (32, 4, "blocks.0"), (32, 4, "blocks.1"), (32, 4, "blocks.2")]
    assert [f.reduction for f in tiny("cct_7_3x1_32").feature_info] == [2] * 3
    assert [f.reduction for f in tiny("cct_7_7x2_224").feature_info] == [16] * 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape for m in maps] == [(2, 32, 8, 8)] * 3
        features = model.forward_features(x)
        assert features.shape == (2, 64, 32)
        torch.testing.assert_close(final, features)
        torch.testing.assert_close(model.forward_tokens(model.embed(x)), features)
        tokens = model.forward_intermediates(x, indices=[-1], output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(tokens[0], maps[-1].flatten(2).transpose(1, 2))
        normed = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True,
                                             stop_early=True)
        torch.testing.assert_close(normed[0], features)
        assert torch.equal(model.forward_head(features), model(x))
        weights = model.attention_pool(features).softmax(dim=1)  # sequence pooling, written out
        pooled = (weights * features).sum(dim=1)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), pooled)
        torch.testing.assert_close(model(x), model.head(pooled))
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[3])


def test_reset_classifier_global_pool_and_prune():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model(x).shape == (2, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, 32)  # the sequence-pooled features
        model.reset_classifier(0, "avg")
        assert model.attention_pool is None
        torch.testing.assert_close(model(x), model.forward_features(x).mean(1))
    assert model.config.global_pool == "avg" and model.config.num_classes == 0
    with pytest.raises(ValueError, match="global_pool='token' is not one of"):
        model.reset_classifier(3, "token")
    model.reset_classifier(4, "seq")
    assert model.attention_pool is not None and model(x).shape == (2, 4)
    taken = model.prune_intermediate_layers(indices=[0, 1])
    assert taken == [0, 1] and len(model.blocks) == 2 and model.num_classes == 0


def test_group_matcher_and_no_weight_decay():
    model = tiny()
    ids = layer_ids(model)
    assert set(ids) == {n for n, _ in model.named_parameters()}
    assert ids["pos_embed"] == ids["tokenizer.conv_layers.0.0.weight"] == ids["tokenizer.conv_layers.1.0.weight"] == 0
    assert [ids[f"blocks.{i}.attn.qkv.weight"] for i in range(3)] == [1, 2, 3]
    assert ids["norm.weight"] == ids["blocks.2.mlp.fc2.bias"] == 3
    assert ids["attention_pool.weight"] == ids["head.weight"] == ids["head.bias"] == 4
    assert model.no_weight_decay() == {"pos_embed"}
    assert tiny(pos_embed_type="sine").no_weight_decay() == set()


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


def test_attention_capture_rollout_and_masked_tokens():
    from vitkit.evaluation.explanations import attention_rollout_map, supported_methods
    from vitkit.models._masking import embed_kept, random_keep

    model = tiny()
    with vitkit.capture_attention(model) as maps, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(2, 2, 64, 64)] * 3
    assert {"rollout", "gradcam"} <= set(supported_methods(model))
    heat = attention_rollout_map(model, torch.randn(2, 3, 32, 32))
    assert heat.shape == (2, 32, 32) and torch.isfinite(heat).all()
    keep, _ = random_keep(2, 64, 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = model.forward_tokens(embed_kept(model, torch.randn(2, 3, 32, 32), keep))
        assert tokens.shape == (2, 16, 32) and model.forward_head(tokens).shape == (2, 5)


def test_save_load_round_trip_other_size_and_config_json(tmp_path):
    for pos_embed_type in ("learnable", "sine"):
        model = tiny(pos_embed_type=pos_embed_type)
        vitkit.save(model, tmp_path / pos_embed_type)
        loaded = vitkit.load(tmp_path / pos_embed_type).eval()
        assert isinstance(loaded, Cct) and loaded.config == model.config
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
        bigger = vitkit.load(tmp_path / pos_embed_type, img_size=48).eval()
        assert bigger.grid_size == 12 and bigger(torch.randn(1, 3, 48, 48)).shape == (1, 5)
    assert bigger.pos_embed.shape == (1, 144, 32)  # sine: recomputed for the new grid
    config = make_config("cct", **TINY)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config


# ----- config errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (dict(embed_dim=30, num_heads=4), r"^embed_dim 30 is not divisible by num_heads 4$"),
    (dict(depth=0), r"^depth must be a positive integer, got 0$"),
    (dict(n_conv_layers=1.5), r"^n_conv_layers must be a positive integer, got 1.5$"),
    (dict(kernel_size=0), r"^kernel_size must be a positive integer, got 0$"),
    (dict(conv_stride=0), r"^conv_stride must be a positive integer, got 0$"),
    (dict(conv_padding=-1), r"^conv_padding must be a non-negative integer, got -1$"),
    (dict(global_pool="token"), r"^global_pool='token' is not one of \('seq', 'avg'\)$"),
    (dict(pos_embed_type="rope"), r"^pos_embed_type='rope' is not one of \('learnable', 'sine', 'none'\)$"),
    (dict(mlp_ratio=0), r"^mlp_ratio must be a positive number, got 0$"),
    (dict(drop_path_rate=1.0), r"^drop_path_rate must be in \[0, 1\), got 1.0$"),
    (dict(attn_drop_rate=-0.1), r"^attn_drop_rate must be in \[0, 1\), got -0.1$"),
    (dict(act_layer="swish"), r"^act_layer='swish' is not one of"),
    (dict(qkv_bias="yes"), r"^qkv_bias must be True or False, got 'yes'$"),
    (dict(pooling_padding=2), r"^pooling_padding 2 is more than half of pooling_kernel_size 3"),
    (dict(img_size=1, kernel_size=7, conv_padding=0), r"^img_size 1 leaves no tokens after 2 tokenizer layer"),
])
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config("cct", **{**TINY, "n_conv_layers": 2, **overrides})


def test_untrusted_config_bounds():
    from vitkit.weights.loading import check_config_ranges

    base = {"architecture": "cct", **TINY}
    check_config_ranges({**base, "conv_stride": None, "conv_padding": None}, "config.json")
    with pytest.raises(ValueError, match="mlp_ratio=1000.0 is out of range"):
        check_config_ranges({**base, "mlp_ratio": 1000.0}, "config.json")
    with pytest.raises(ValueError, match="n_conv_layers=100 is out of range"):
        check_config_ranges({**base, "n_conv_layers": 100}, "config.json")
    with pytest.raises(ValueError, match="conv_stride=0 is out of range"):
        check_config_ranges({**base, "conv_stride": 0}, "config.json")
    with pytest.raises(ValueError, match=r"makes 4194304 tokens; expected at most 65536"):
        check_config_ranges({**base, "img_size": 4096, "n_conv_layers": 1, "kernel_size": 3}, "config.json")


# ----- training through the generic trainer --------------------------------------------------------
def test_trains_one_epoch_on_digits(tmp_path):
    pytest.importorskip("sklearn")
    from vitkit.training import TrainConfig, train

    summary = train(TrainConfig.from_dict(dict(
        model="cct_2_3x2_28", data="digits", img_size=16, model_kwargs={"embed_dim": 32, "num_heads": 2,
                                                                        "conv_width": 8},
        batch_size=64, epochs=1, lr=2e-3, warmup_epochs=0, drop_path=0.0, progress=False,
        output=str(tmp_path / "run"))))
    rows = [json.loads(line) for line in (Path(summary["output"]) / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["epoch"] == 1 and math.isfinite(rows[0]["train_loss"])
    best = vitkit.load(Path(summary["output"]) / "best")
    assert isinstance(best, Cct) and best.config.in_chans == 1 and best.config.img_size == 16
