"""BEiT: timm parity (fixture), Hugging Face layouts both ways, the backbone contract on a tiny model."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

import vitkit
import vitkit.models.beit  # noqa: F401  (registers the family until models/__init__.py imports it)
from vitkit.models import build_model, make_config
from vitkit.models._groups import layer_ids
from vitkit.models._protocol import Backbone, TokenSequence
from vitkit.models.beit import Beit, BeitConfig
from vitkit.models.beit.convert import from_hf
from vitkit.models.beit.export import hf_state_dict_from, timm_peer, transformers_peer
from vitkit.weights import load_state_dict

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def tiny(**overrides) -> Beit:
    return vitkit.create_model("beit_base_patch16_224", **{**TINY, **overrides}).eval()


def perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Every parameter moved, so zero-initialised ones (bias tables, q/v biases) matter."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


def fixture(fixtures_dir, name="beit_cfg_p4_32"):
    meta = json.loads((fixtures_dir / "timm" / f"{name}.json").read_text())
    tensors = load_file(fixtures_dir / "timm" / f"{name}.safetensors")
    ref = {k: tensors.pop(k) for k in ("__input__", "__logits__", "__features__")}
    return meta, tensors, ref


def test_reproduces_timm_outputs(fixtures_dir):
    meta, state_dict, ref = fixture(fixtures_dir)
    assert meta["timm_class"] == "Beit"
    model = vitkit.create_model(meta["timm_model"], **meta["kwargs"]).eval()
    assert not any("relative_position_index" in k or "k_bias" in k for k in model.state_dict())
    model.load_state_dict(state_dict, strict=True)  # timm's keys, unchanged
    with torch.no_grad():
        features = model.forward_features(ref["__input__"])
        assert features.shape == tuple(meta["features_shape"])
        torch.testing.assert_close(features, ref["__features__"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)


def test_checkpoint_with_saved_index_buffers_loads(fixtures_dir):
    """Original BEiT and older timm checkpoints also hold `relative_position_index` (and `k_bias`)."""
    meta, state_dict, ref = fixture(fixtures_dir)
    model = vitkit.create_model(meta["timm_model"], **meta["kwargs"]).eval()
    old = dict(state_dict)
    for name, buffer in model.named_buffers():
        old[name] = buffer
    old["blocks.0.attn.k_bias"] = torch.zeros(64)
    assert "blocks.0.attn.relative_position_index" in old
    load_state_dict(model, old, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ref["__input__"]), ref["__logits__"], atol=1e-4, rtol=0)


def test_from_timm_class_and_timm_peer(fixtures_dir):
    meta, state_dict, ref = fixture(fixtures_dir)
    config = vitkit.models.model_config(meta["timm_model"], **meta["kwargs"])
    module, cls, kwargs, build_only = timm_peer(config)
    assert (module, cls) == ("timm.models.beit", "Beit")
    assert kwargs["use_rel_pos_bias"] and not kwargs["use_abs_pos_emb"] and kwargs["init_values"] == 0.1
    assert "norm_eps" not in kwargs and build_only["norm_layer"](8).eps == 1e-6
    from vitkit.models.registry import family_named

    again = family_named("beit").timm_classes["Beit"](dict(kwargs, img_size=(32, 32)))
    assert again == config


@pytest.mark.parametrize("name,count", [("beit_base_patch16_224", 86_530_984), ("beit_base_patch16_384", 86_744_104),
                                        ("beit_large_patch16_224", 304_430_568)])
def test_parameter_counts_match_timm(name, count):
    """timm's results csv: 86.53 M, 86.74 M, 304.43 M; beit_base_patch16_224 exactly 86,530,984."""
    with torch.device("meta"):
        model = vitkit.create_model(name)
    assert vitkit.count_params(model) == count


def test_named_models_input_spec():
    assert {"beit_base_patch16_224", "beit_base_patch16_384", "beit_large_patch16_224"} <= set(
        vitkit.list_models("beit_*"))
    with torch.device("meta"):
        spec = vitkit.create_model("beit_base_patch16_384").input_spec
    assert spec.img_size == (384, 384) and spec.fixed_size and spec.size_multiple == 16
    assert spec.mean == spec.std == (0.5, 0.5, 0.5) and spec.crop_pct == 1.0 and spec.interpolation == "bicubic"
    free = tiny(use_rel_pos_bias=False)  # no position information at all: any multiple of the patch size
    assert not free.input_spec.fixed_size
    assert free.forward_intermediates(torch.randn(1, 3, 48, 32), intermediates_only=True)[0].shape == (1, 32, 12, 8)
    with pytest.raises(ValueError, match="expected input size 32x32, got 48x48"):
        tiny()(torch.randn(1, 3, 48, 48))


def _hf_beit(tmp_path, num_labels=5, **overrides):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    kwargs = dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, use_relative_position_bias=True, use_absolute_position_embeddings=False,
                  use_mean_pooling=True, layer_scale_init_value=0.1, num_labels=num_labels)
    cfg = transformers.BeitConfig(**{**kwargs, **overrides})
    hf = (transformers.BeitForImageClassification(cfg) if num_labels else transformers.BeitModel(cfg)).eval()
    perturb(hf)
    hf.save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize("overrides", [
    {},  # beit_base_patch16_224's layout: per-block bias tables, LayerScale, mean pooling + fc_norm
    dict(use_mean_pooling=False, use_absolute_position_embeddings=True),  # class token, final norm, abs pos emb
    dict(use_relative_position_bias=False, use_shared_relative_position_bias=True, layer_scale_init_value=0.0),
])
def test_hugging_face_conversion_matches_transformers(tmp_path, overrides):
    hf = _hf_beit(tmp_path, **overrides)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    config, state_dict = from_hf(hf_config, load_file(tmp_path / "model.safetensors"))
    assert config.norm_eps == 1e-12 and config.use_rel_pos_bias == hf_config["use_relative_position_bias"]
    model = build_model(config).eval()
    model.load_state_dict(state_dict, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)
    # transformers 5's in-memory names convert the same way
    config2, in_memory = from_hf(hf_config, hf.state_dict())
    assert config2 == config and in_memory.keys() == state_dict.keys()
    assert all(torch.equal(in_memory[k], v) for k, v in state_dict.items())


def test_hugging_face_model_without_head(tmp_path):
    hf = _hf_beit(tmp_path, num_labels=0)
    model = vitkit.load(tmp_path).eval()
    assert model.num_classes == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = hf(pixel_values=x)
        torch.testing.assert_close(model(x), out.pooler_output, atol=1e-4, rtol=0)
        torch.testing.assert_close(model.forward_features(x), out.last_hidden_state, atol=1e-4, rtol=0)


def test_vitkit_load_of_hugging_face_directory_and_checkpoint_option(tmp_path):
    hf = _hf_beit(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    loaded = vitkit.load(tmp_path).eval()
    created = vitkit.create_model("beit_base_patch16_224", checkpoint=str(tmp_path), norm_eps=1e-12, mlp_ratio=2.0,
                                  **TINY).eval()
    with torch.no_grad():
        logits = hf(pixel_values=x).logits
        for model in (loaded, created):
            torch.testing.assert_close(model(x), logits, atol=1e-4, rtol=0)


def test_transformers_peer_round_trip(tmp_path):
    """export.py is convert.py's inverse, and the bench's peer (transformers with our weights) agrees."""
    pytest.importorskip("transformers")
    model = tiny()
    perturb(model, 0.1)
    cls, hf_config, convert = transformers_peer(model.config)
    assert cls == "BeitForImageClassification"
    config, state_dict = from_hf(hf_config, convert(model.state_dict()))
    assert config.norm_eps == model.config.norm_eps
    assert state_dict.keys() == model.state_dict().keys()
    from vitkit.bench.variants import build_peer

    peer = build_peer(model, "hf")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(peer(x), model(x), atol=1e-4, rtol=0)
    keys = hf_state_dict_from(model.state_dict(), model.config)
    assert "beit.encoder.layer.0.attention.attention.key.weight" in keys
    assert "beit.encoder.layer.0.attention.attention.key.bias" not in keys
    with pytest.raises(ValueError, match="qkv_bias=False"):
        transformers_peer(tiny(qkv_bias=False).config)


def test_contract_on_a_tiny_model(tmp_path):
    model = tiny()
    assert isinstance(model, Backbone) and isinstance(model, TokenSequence)
    x = torch.randn(2, 3, 32, 32)
    assert [(f.num_chs, f.reduction, f.module) for f in model.feature_info] == [(32, 4, "blocks.0"),
                                                                                 (32, 4, "blocks.1")]
    modules = dict(model.named_modules())
    assert all(f.module in modules for f in model.feature_info)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape for m in maps] == [(2, 32, 8, 8)] * 2
        torch.testing.assert_close(final, model.forward_features(x))
        tokens = model.forward_intermediates(x, indices=[-1], output_fmt="NLC", return_prefix_tokens=True,
                                             intermediates_only=True)
        patches, cls = tokens[0]
        torch.testing.assert_close(torch.cat([cls, patches], 1), final)  # fc_norm model: no final norm
        torch.testing.assert_close(patches.transpose(1, 2).reshape(2, 32, 8, 8), maps[-1])
        pooled = model.forward_head(final, pre_logits=True)
        assert pooled.shape == (2, 32) and torch.equal(model.forward_head(final), model(x))
    vitkit.save(model, tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(vitkit.load(tmp_path / "m").eval()(x), model(x), atol=0, rtol=0)
    model.reset_classifier(0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), pooled)
    model.reset_classifier(3, global_pool="token")  # the norms stay as built; the config says so
    assert model.config.fc_norm is True and model(x).shape == (2, 3)
    vitkit.save(model, tmp_path / "token")
    with torch.no_grad():
        torch.testing.assert_close(vitkit.load(tmp_path / "token").eval()(x), model(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="global_pool='max' is not one of"):
        model.reset_classifier(3, global_pool="max")
    assert model.prune_intermediate_layers(indices=[0]) == [0] and len(model.blocks) == 1 and model.num_classes == 0


def test_groups_no_weight_decay_and_grad_checkpointing():
    model = tiny(use_shared_rel_pos_bias=True, use_abs_pos_emb=True, drop_path_rate=0.0)
    ids = layer_ids(model)
    assert ids["cls_token"] == ids["pos_embed"] == ids["patch_embed.proj.weight"] == 0
    assert ids["rel_pos_bias.relative_position_bias_table"] == 0
    assert ids["blocks.0.attn.q_bias"] == 1 and ids["blocks.1.gamma_2"] == 2
    assert ids["fc_norm.weight"] == ids["head.weight"] == 3
    nwd = model.no_weight_decay()
    assert {"pos_embed", "cls_token", "rel_pos_bias.relative_position_bias_table",
            "blocks.1.attn.relative_position_bias_table"} <= nwd
    model.train()
    perturb(model)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], atol=1e-5, rtol=1e-4)


def test_attention_capture_and_token_dropping_refused():
    from vitkit.evaluation.attention_maps import capture_attention

    model = tiny()
    perturb(model)
    x = torch.randn(1, 3, 32, 32)
    with capture_attention(model) as maps, torch.no_grad():
        model(x)
    assert len(maps) == 2 and maps[0].shape == (1, 2, 65, 65)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(1, 2, 65))
    with capture_attention(model, grad=True) as maps:  # explicit attention, equal to the fused one
        logits = model(x)
    assert maps[0].requires_grad
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=0)
    tokens = model.embed(x)[:, :40]  # patch tokens left out (masked pretraining, token merging)
    with pytest.raises(ValueError, match="relative position bias covers 65 tokens .* got 40"):
        model.forward_tokens(tokens)


def test_another_image_size_resamples_position_weights(tmp_path):
    model = tiny(use_abs_pos_emb=True)
    perturb(model)
    vitkit.save(model, tmp_path / "m")
    bigger = vitkit.create_model("beit_base_patch16_224", checkpoint=str(tmp_path / "m"),
                                 **{**TINY, "img_size": 48, "use_abs_pos_emb": True}).eval()
    assert bigger.pos_embed.shape == (1, 145, 32)
    assert bigger.blocks[0].attn.relative_position_bias_table.shape == (23 * 23 + 3, 2)
    torch.testing.assert_close(bigger.blocks[0].attn.relative_position_bias_table[-3:],
                               model.blocks[0].attn.relative_position_bias_table[-3:])
    assert bigger(torch.randn(1, 3, 48, 48)).shape == (1, 5)


def test_bad_configs_are_explained():
    cases = [
        (dict(embed_dim=30, num_heads=4), "embed_dim 30 is not divisible by num_heads 4"),
        (dict(img_size=30), "img_size 30 is not divisible by patch_size 16"),
        (dict(depth=0), "depth must be a positive integer, got 0"),
        (dict(global_pool="max"), "global_pool='max' is not one of"),
        (dict(drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\)"),
        (dict(mlp_ratio=0), "mlp_ratio must be positive"),
        (dict(init_values=-1.0), "init_values must be None or non-negative"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            make_config("beit", **overrides)
    with pytest.raises(ValueError, match=r"unknown beit argument\(s\): swiglu_mlp"):
        make_config("beit", swiglu_mlp=True)
    config = BeitConfig()
    assert config.global_pool == "avg" and config.use_fc_norm and config.fixed_size  # timm's defaults


def test_untrusted_config_limits(tmp_path):
    from vitkit.weights.loading import check_config_ranges

    check_config_ranges({"architecture": "beit", **TINY}, "config.json")
    with pytest.raises(ValueError, match=r"depth=100000 is out of range"):
        check_config_ranges({"architecture": "beit", "depth": 100000}, "config.json")
    with pytest.raises(ValueError, match="makes 262144 patch tokens"):
        check_config_ranges({"architecture": "beit", "img_size": 8192, "patch_size": 16}, "config.json")
    with pytest.raises(ValueError, match="mlp_ratio"):
        check_config_ranges({"architecture": "beit", "mlp_ratio": 1e9}, "config.json")
    assert re.search("beit", repr(vitkit.models.registry.family_named("beit")))


def test_int8_and_onnx_export(tmp_path):
    """Consumers that rewrite or trace the model: int8 (the qkv linear replaced), ONNX with a dynamic batch
    (the bias-carrying attention written explicitly there)."""
    model = tiny()
    perturb(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert (vitkit.optimize(model, "int8")(x) - ref).abs().max() < 0.05
    pytest.importorskip("onnxruntime")
    from vitkit.efficiency.onnx_export import OnnxModel, export_onnx

    session = OnnxModel(export_onnx(model, tmp_path / "m.onnx"), model.config)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            assert (session(x) - model(x)).abs().max() < 1e-4


def test_unsupported_hugging_face_configs_are_named():
    with pytest.raises(ValueError, match="no equivalent of hidden_act='relu'"):
        from_hf({"hidden_act": "relu"}, {})
    with pytest.raises(ValueError, match="use_mean_pooling is set but the pooler's layernorm"):
        from_hf({"hidden_size": 32, "num_attention_heads": 2}, {"beit.embeddings.cls_token": torch.zeros(1, 1, 32)})


def test_inference_reuses_the_bias_lookup_until_the_weights_change():
    """Without gradients the relative position bias and the q/v bias are built once per version of the weights:
    the same outputs as building them every call, and a weight update (in place, as an optimizer's) is seen."""
    from vitkit.models.beit.model import lookup_bias

    torch.manual_seed(0)
    model = vitkit.create_model("beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                                num_heads=2, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    attn = model.blocks[0].attn
    with torch.no_grad():
        first = model(x)
        cached = attn.position_bias()
        assert attn.position_bias() is cached  # reused
        attn.relative_position_bias_table.add_(torch.randn_like(attn.relative_position_bias_table))
        attn.q_bias.add_(1.0)
        assert attn.position_bias() is not cached
        torch.testing.assert_close(attn.position_bias(),
                                   lookup_bias(attn.relative_position_bias_table, attn.relative_position_index))
        changed = model(x)
    assert not torch.allclose(first, changed)
    reference = model(x)  # with gradients: built afresh, nothing cached is used
    torch.testing.assert_close(changed, reference.detach(), atol=1e-6, rtol=1e-6)
    assert attn.position_bias().requires_grad


def test_the_inference_cache_is_not_copied_pickled_or_kept_across_dtype_changes():
    import copy
    import pickle

    torch.manual_seed(0)
    model = vitkit.create_model("beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1,
                                num_heads=2, num_classes=3).eval()
    attn = model.blocks[0].attn
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
    assert "_inference_cache" in vars(attn)
    assert "_inference_cache" not in vars(copy.deepcopy(model).blocks[0].attn)
    assert "_inference_cache" not in vars(pickle.loads(pickle.dumps(model)).blocks[0].attn)
    model.to(torch.float64)
    assert "_inference_cache" not in vars(attn)
    with torch.no_grad():
        assert attn.position_bias().dtype == torch.float64 and model(x.double()).dtype == torch.float64
    with torch.inference_mode():  # a model made in inference mode has tensors without version counters
        made_there = vitkit.create_model("beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1,
                                         num_heads=2, num_classes=3).eval()
        assert torch.isfinite(made_there(x)).all()
