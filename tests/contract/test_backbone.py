"""vitkit's backbone contract (src/vitkit/models/_protocol.py), checked on every registered model.

Each family gives tiny overrides so that every name builds in milliseconds; a new family fails here
until it says how to make a tiny one of itself, and until it honours the contract."""

import math

import pytest
import torch

import vitkit
from vitkit.models import list_models
from vitkit.models._groups import layer_ids
from vitkit.models._protocol import Backbone, InputSpec
from vitkit.models.registry import model_architecture

TINY = {  # architecture -> overrides that keep the family's structure and make it small
    "vit": dict(embed_dim=32, depth=2, num_heads=2),
    "convnext": dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)),
    "swin": dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
    "beit": dict(embed_dim=32, depth=2, num_heads=2),
    "cait": dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2),
    "pvt_v2": dict(depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32), num_heads=(1, 1, 1, 1)),
    "cct": dict(embed_dim=32, depth=2, num_heads=2, conv_width=8),
    "efficientformer": dict(depths=(1, 1, 1, 2), embed_dims=(8, 16, 24, 32), num_vit=1, img_size=64),
    "metaformer": dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), head_dim=8, img_size=64),
    "resnet": dict(stem_width=8, depths=(1, 1, 1), dims=(8, 16, 24)),
    "xcit": dict(img_size=32, embed_dim=32, depth=2, num_heads=2),
}
MODELS = list_models()


def tiny(name: str, **extra):
    architecture = model_architecture(name)
    if architecture not in TINY:
        pytest.fail(f"family {architecture!r} ({name}) has no tiny overrides in tests/contract/test_backbone.py")
    return vitkit.create_model(name, **TINY[architecture], **extra).eval()


def batch(model, n: int = 2) -> torch.Tensor:
    spec = model.input_spec
    return torch.randn(n, spec.in_chans, *spec.img_size)


@pytest.mark.parametrize("name", MODELS)
def test_forward_features_head_and_spec(name):
    model = tiny(name, num_classes=5)
    assert isinstance(model, Backbone), f"{name} misses part of the backbone contract"
    spec = model.input_spec
    assert isinstance(spec, InputSpec) and spec.in_chans in (1, 3) and len(spec.mean) == len(spec.std)
    x = batch(model)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        assert torch.equal(model.forward_head(features), logits)
        pooled = model.forward_head(features, pre_logits=True)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert pooled.shape == (2, model.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_match_feature_info(name):
    model = tiny(name)
    x = batch(model)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert len(maps) == len(model.feature_info)
    height, width = model.input_spec.img_size
    for info, fmap in zip(model.feature_info, maps, strict=True):
        assert fmap.shape == (2, info.num_chs, math.ceil(height / info.reduction), math.ceil(width / info.reduction))
        assert info.module in dict(model.named_modules()), info.module


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip_and_head_reset(name, tmp_path):
    model = tiny(name)
    x = batch(model)
    vitkit.save(model, tmp_path / "m")
    again = vitkit.load(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_group_matcher_orders_stem_blocks_head(name):
    model = tiny(name)
    ids = layer_ids(model)
    assert set(ids) == {n for n, _ in model.named_parameters()}
    head = [n for n in ids if n.startswith("head")]
    assert head and all(ids[n] == max(ids.values()) for n in head), "the head is the last group"
    assert min(ids.values()) == 0 and len(set(ids.values())) >= 3  # stem, blocks or stages, head
    assert isinstance(model.no_weight_decay(), set)


@pytest.mark.parametrize("name", MODELS[:: max(1, len(MODELS) // 8)])  # a sample: each costs a backward pass
def test_gradient_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    model = tiny(name).train()
    x = batch(model)
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        if n in plain:
            torch.testing.assert_close(p.grad, plain[n], atol=1e-5, rtol=1e-4)


def _first_of_each_family() -> list[str]:
    firsts = {}
    for name in MODELS:
        firsts.setdefault(model_architecture(name), name)
    return sorted(firsts.values())


@pytest.mark.parametrize("name", MODELS)
def test_onednn_inference_path_equals_the_plain_one(name, monkeypatch, onednn_for_every_size):
    """Every model's eager CPU inference with its attention and MLP linear layers through oneDNN (thresholds
    at 0) gives the plain F.linear outputs; a model with such layers really takes that path."""
    import vitkit.layers.linear as linear_module

    model, calls = tiny(name), []
    onednn = linear_module._onednn_linear
    x = batch(model)
    with torch.no_grad():
        monkeypatch.setattr(linear_module, "_onednn_linear", None)
        plain = model(x)
        monkeypatch.setattr(linear_module, "_onednn_linear", lambda *a: calls.append(1) or onednn(*a))
        fused = model(x)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-4)
    body_linears = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear and not n.startswith("head")]
    assert calls or not body_linears, f"{name}: no oneDNN call with linear layers {body_linears[:3]}"


@pytest.mark.parametrize("name", _first_of_each_family())
def test_checkpointing_only_where_a_backward_pass_will_come(name, monkeypatch):
    """Blocks are checkpointed in training mode with gradients recorded, never under no_grad (nothing to save
    memory for) or in eval mode: every family through the one rule in `_features.run_block`."""
    import vitkit.models._features as features

    calls = []
    real = features.checkpoint
    monkeypatch.setattr(features, "checkpoint", lambda fn, *args, **kw: calls.append(1) or real(fn, *args, **kw))
    model = tiny(name)
    model.set_grad_checkpointing(True)
    x = batch(model)
    with torch.no_grad():
        model.train()(x)
    model.eval()(x)
    assert not calls
    model.train()(x)
    assert calls


@pytest.mark.parametrize("name", ["vit_base_patch16_clip_224", "vit_small_patch14_dinov2", "deit_tiny_patch16_224",
                                  "convnext_atto", "swin_tiny_patch4_window7_224"])
def test_input_spec_carries_the_named_weights_preprocessing(name, tmp_path):
    """mean / std / crop_pct come from the registered name's pretrained cfg, survive save -> load, and a
    training run's recorded values replace them."""
    from vitkit.models import pretrained_cfg

    model = tiny(name)
    cfg = pretrained_cfg(name)
    spec = model.input_spec
    for key, value in cfg.items():
        assert getattr(spec, key) == (tuple(value) if isinstance(value, list | tuple) else value), key
    vitkit.save(model, tmp_path / "m")
    assert vitkit.load(tmp_path / "m").input_spec == spec
    recorded = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "crop_pct": 1.0}
    vitkit.save(model, tmp_path / "trained", metadata=recorded)
    trained = vitkit.load(tmp_path / "trained").input_spec
    assert (trained.mean, trained.std, trained.crop_pct) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 1.0)


@pytest.mark.parametrize("name", MODELS)
def test_probe_features_from_every_family(name):
    """`vitkit probe` reads any model through the contract: pooled, per-block patch means (stages differ in
    width), the class token where there is one; every feature set the linear grid offers."""
    from vitkit.data.base import DatasetInfo, InMemoryImageDataset
    from vitkit.probe.features import cached_blocks, extract, feature_sets, has_class_token, select

    model = tiny(name, num_classes=0)
    spec = model.input_spec
    info = DatasetInfo("tiny", 2, ("a", "b"), spec.in_chans, spec.img_size[0], (0.5,) * spec.in_chans,
                       (0.5,) * spec.in_chans)
    images = torch.randint(0, 256, (3, spec.in_chans, *spec.img_size), dtype=torch.uint8)
    dataset = InMemoryImageDataset(images, torch.tensor([0, 1, 0]), info)
    blocks = min(2, len(model.feature_info))
    features = extract(model, dataset, lambda x: x.float() / 255, blocks=blocks, batch_size=2)
    assert features["pooled"].shape == (3, model.num_features) and cached_blocks(features) == blocks
    assert features["patch_mean/1"].shape == (3, model.feature_info[-1].num_chs)
    assert ("cls/1" in features) == has_class_token(model)
    sets = feature_sets(features, (1, blocks))
    assert len(sets) == (4 if has_class_token(model) else 2) // (2 if blocks == 1 else 1)
    assert all(torch.isfinite(v).all() and len(v) == 3 for v in sets.values())
    assert select(features, "patch_mean", blocks).shape[1] == sum(i.num_chs for i in model.feature_info[-blocks:])
