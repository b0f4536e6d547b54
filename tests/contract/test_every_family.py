"""Every consumer on one tiny model of every architecture: it works, or it refuses with a one-line ValueError that
names the model class and why. A new family is picked up here as soon as it registers a name (and gives its tiny
overrides in test_backbone.py's TINY).

The cases: the first registered name of each architecture, and the other MetaFormer variants (the metaformer
architecture is four families in one: pooling, separable-convolution and attention token mixers)."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.models import families
from vitkit.models.registry import _MODELS, model_architecture

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is no package: TINY is test_backbone.py's, not a copy
from test_backbone import TINY  # noqa: E402
from test_consumers import ONE_PER_FAMILY  # noqa: E402

FIRST = {}  # architecture -> its first registered name (registration order: the family's smallest usually)
for _name, (_architecture, _, _) in _MODELS.items():
    FIRST.setdefault(_architecture, _name)
CASES = {**FIRST, "poolformerv2": "poolformerv2_s12", "convformer": "convformer_s18", "caformer": "caformer_s18"}

# what is refused, and where: a family registered later (another helper's) is judged by the same rules, and the
# families known now are pinned (test_refusals_of_the_known_families) so that a regression shows
NO_LINEAR = {"convnext", "metaformer", "poolformerv2", "convformer"}  # all convolutions: dynamic int8 has nothing
NO_ATTENTION = {"convnext", "metaformer", "poolformerv2", "convformer"}  # attention-free token mixers
NO_ATTENTION_GRAD = {"swin", "pvt_v2", "caformer"}  # attention modules without an explicit-attention grad mode
MIXED_HEADS = {"cait"}  # talking heads: the captured maps are the probabilities mixed across heads (proj_w)
TOKEN_MODELS = {"vit", "beit", "cct"}  # ToMe / EViT token adapters (vitkit.efficiency.adapters)
NO_CLASS_TOKEN = {"cct"}  # EViT ranks by class-token attention: refused
TOKEN_REFUSAL_WORDS = {"cait": ("talking-heads",), "xcit": ("local patch interaction",),
                       "swin": ("stages of feature maps",), "convnext": ("stages of feature maps",)}
# ONNX export costs seconds a model: the cases test_consumers.py exports already (same class and token mixer), and
# PoolFormerV2 (PoolFormer's pooling mixer), are not exported again here
ONNX_ELSEWHERE = {"vit", "convnext", "swin", "pvt_v2", "caformer"}
ONNX_CASES = [key for key in CASES if key not in ONNX_ELSEWHERE | {"poolformerv2"}]


def test_every_architecture_has_a_case():
    assert set(FIRST) == {f.name for f in families()}
    assert all(model_architecture(name) == "metaformer" for key, name in CASES.items() if key not in FIRST)
    exported = {model_architecture(name) for name in ONE_PER_FAMILY} | set(ONE_PER_FAMILY)
    assert all(key in exported or CASES[key] in exported for key in ONNX_ELSEWHERE)


def has_linear_below_head(model) -> bool:
    return any(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if not n.startswith("head"))


def attention_kinds(model) -> tuple[bool, bool]:
    """(has attention modules, all of them have an explicit-attention grad mode)"""
    from vitkit.evaluation.attention_maps import attention_modules

    modules = attention_modules(model)
    return bool(modules), bool(modules) and all(hasattr(m, "attention_grad") for m in modules)


KNOWN = ("beit", "cait", "cct", "convnext", "efficientformer", "metaformer", "pvt_v2", "swin", "vit", "xcit",
         "poolformerv2", "convformer", "caformer")  # the families whose refusals are pinned above


@pytest.mark.parametrize("key", KNOWN)
def test_refusals_of_the_known_families(key):
    model = tiny(key)
    assert has_linear_below_head(model) == (key not in NO_LINEAR)
    assert attention_kinds(model) == (key not in NO_ATTENTION, key not in NO_ATTENTION | NO_ATTENTION_GRAD)


def tiny(key: str, **extra) -> torch.nn.Module:
    name = CASES[key]
    torch.manual_seed(0)
    return vitkit.create_model(name, **TINY[model_architecture(name)], **extra).eval()


def images(model, n: int = 2) -> torch.Tensor:
    spec = model.input_spec
    return torch.randn(n, spec.in_chans, *spec.img_size)


def refuses(err: Exception, model, *words: str) -> None:
    """A clean refusal: a one-line message naming the model class and why."""
    message = str(err)
    assert "\n" not in message, message
    assert type(model).__name__ in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("key", CASES)
def test_info_prints_a_summary(key, tmp_path, capsys):
    """`vitkit info` of a saved tiny model (info builds a registered name at full size: seconds for the
    base-sized first names, so the directory form checks the same rows)."""
    from vitkit.cli import main

    model = tiny(key)
    vitkit.save(model, tmp_path / "m")
    assert main(["info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "Traceback" not in out
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert {"model", "family", "params", "GFLOPs"} <= set(rows), out
    assert rows["params"].startswith(f"{vitkit.count_params(model) / 1e6:.2f} M")
    assert ("tokens" in rows) != ("stages" in rows), out


@pytest.mark.parametrize("key", CASES)
def test_training_with_layer_decay_and_reload_then_eval_and_predict(key, tmp_path, capsys):
    from safetensors.torch import load_file

    from vitkit.training import TrainConfig, train

    name = CASES[key]
    overrides = TINY[model_architecture(name)]
    summary = train(TrainConfig.from_dict({
        "model": name, "data": "synthetic:16", "model_kwargs": overrides, "batch_size": 4, "epochs": 1,
        "max_steps": 2, "layer_decay": 0.75, "drop_path": 0.0, "progress": False, "output": str(tmp_path / "run"),
    }))
    out = Path(summary["output"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(rows[0]["train_loss"]), rows[0]
    loaded = vitkit.load(out / "final").eval()
    saved = vitkit.create_model(name, num_classes=loaded.num_classes, **overrides).eval()
    saved.load_state_dict(load_file(out / "final" / "model.safetensors"))
    x = images(saved)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), saved(x), atol=0, rtol=0)
    # the trained model through `vitkit eval` and `vitkit predict`
    from PIL import Image

    from vitkit.cli import main

    assert main(["eval", str(out / "final"), "--data", "synthetic:16", "--out", str(tmp_path / "eval")]) == 0
    assert 0 <= json.loads((tmp_path / "eval" / "eval.json").read_text())["top1"] <= 1
    Image.fromarray(torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8).numpy()).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["predict", str(out / "final"), str(tmp_path / "a.png"), "--topk", "2"]) == 0
    assert "a.png" in capsys.readouterr().out


@pytest.mark.parametrize("key", CASES)
def test_optimize_precision_and_token_reduction(key):
    from vitkit.efficiency.adapters import find_token_adapter

    model = tiny(key, num_classes=4)
    x = images(model)
    with torch.no_grad():
        reference = model(x)
        assert torch.isfinite(vitkit.optimize(tiny(key, num_classes=4), "bf16")(x).float()).all()
        if not has_linear_below_head(model):
            with pytest.raises(ValueError) as err:
                vitkit.optimize(tiny(key, num_classes=4), "int8")
            refuses(err.value, model, "no linear layers left to quantize")
        else:
            int8 = vitkit.optimize(tiny(key, num_classes=4), "int8")(x)
            assert int8.shape == reference.shape and torch.isfinite(int8).all()
    for spec in ("tome:r=1", "evit:keep=0.7"):
        if find_token_adapter(model) is not None and not (spec.startswith("evit") and key in NO_CLASS_TOKEN):
            with torch.no_grad():
                fast = vitkit.optimize(tiny(key, num_classes=4), spec)
                reduced = fast(x)
            assert reduced.shape == reference.shape and torch.isfinite(reduced).all()
            assert fast.token_state.size.shape[1] < model_tokens(model)  # tokens were merged or pruned
        elif find_token_adapter(model) is not None:
            with pytest.raises(ValueError) as err:
                vitkit.optimize(tiny(key, num_classes=4), spec)
            refuses(err.value, model, "has no class token")
        else:
            with pytest.raises(ValueError) as err:
                vitkit.optimize(tiny(key, num_classes=4), spec)
            refuses(err.value, model, f"{spec.split(':')[0]} needs a model whose blocks all see one token sequence",
                    *TOKEN_REFUSAL_WORDS.get(key, ()))
    assert (find_token_adapter(model) is not None) == (key in TOKEN_MODELS)


def model_tokens(model) -> int:
    from vitkit.efficiency.adapters import find_token_adapter

    return find_token_adapter(model).num_tokens(model)


@pytest.mark.parametrize("key", ONNX_CASES)
def test_onnx_export_matches_pytorch(key, tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.efficiency.onnx_export import OnnxModel, export_onnx

    model = tiny(key, num_classes=4)
    session = OnnxModel(export_onnx(model, tmp_path / "m.onnx"), model.config)
    for batch in (1, 3):  # the batch dimension is dynamic
        x = images(model, batch)
        with torch.no_grad():
            assert (session(x) - model(x)).abs().max() < 1e-4


@pytest.mark.parametrize("key", CASES)
def test_probe_features_are_finite(key):
    from vitkit.data.base import DatasetInfo, InMemoryImageDataset
    from vitkit.probe.features import extract

    model = tiny(key, num_classes=0)
    spec = model.input_spec
    info = DatasetInfo("tiny", 2, ("a", "b"), spec.in_chans, spec.img_size[0], (0.5,) * spec.in_chans,
                       (0.5,) * spec.in_chans)
    pixels = torch.randint(0, 256, (3, spec.in_chans, *spec.img_size), dtype=torch.uint8)
    features = extract(model, InMemoryImageDataset(pixels, torch.tensor([0, 1, 0]), info),
                       lambda x: x.float() / 255, blocks=2, batch_size=2)
    assert features["pooled"].shape == (3, model.num_features)
    for j in (1, 2):
        assert features[f"patch_mean/{j}"].shape == (3, model.feature_info[-j].num_chs)
    assert all(torch.isfinite(v).all() for k, v in features.items() if k != "labels")


@pytest.mark.parametrize("key", CASES)
def test_every_supported_explanation_gives_maps_and_the_others_refuse(key):
    from vitkit.evaluation.explanations import EXPLAINERS, explain, supported_methods

    model = tiny(key, num_classes=4)
    with torch.no_grad():  # away from the zero-init heads and layer scales, so gradients are not ~0
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = images(model)
    methods = supported_methods(model)
    assert "gradcam" in methods and "occlusion" in methods
    for method in methods:
        maps = explain(model, x, method)
        assert maps.shape == (2, *x.shape[-2:]), method
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, method
    assert (explain(model, x, "gradcam").flatten(1).amax(1) == 1).all(), "Grad-CAM gave a constant map"
    for method in set(EXPLAINERS) - set(methods):
        with pytest.raises(ValueError) as err:
            explain(model, x, method)
        refuses(err.value, model, f"{method} cannot explain")


@pytest.mark.parametrize("key", CASES)
def test_capture_attention_gives_probabilities_or_refuses(key):
    model = tiny(key, num_classes=4)
    x = images(model)
    attention, attention_grad = attention_kinds(model)
    if not attention:
        with pytest.raises(ValueError) as err, vitkit.capture_attention(model):
            pass
        refuses(err.value, model, "has no attention modules")
        return
    with torch.no_grad(), vitkit.capture_attention(model) as maps:
        model(x)
    assert maps and all(torch.isfinite(a).all() and a.shape[0] == 2 for a in maps)
    for a in maps if key not in MIXED_HEADS else ():  # softmax rows
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5, rtol=0)
    if not attention_grad:
        with pytest.raises(ValueError) as err, vitkit.capture_attention(model, grad=True):
            pass
        refuses(err.value, model, "cannot give attention probabilities with gradients")
        return
    with vitkit.capture_attention(model, grad=True) as maps:
        model(x).sum().backward()
    assert maps and all(a.requires_grad for a in maps)


def test_model_kwargs_may_give_the_input_size_but_not_a_different_one(tmp_path):
    """The tiny overrides of cait, xcit, efficientformer and metaformer carry img_size: the trainer takes it from
    model_kwargs, and names a clash with the run's own img_size instead of a TypeError."""
    from vitkit.training import TrainConfig, train

    overrides = TINY["cait"]
    config = {"model": CASES["cait"], "data": "synthetic:16", "model_kwargs": overrides, "batch_size": 4,
              "epochs": 1, "max_steps": 1, "progress": False, "img_size": 48}
    with pytest.raises(ValueError, match=r"model_kwargs img_size=32 disagrees with img_size \(48\); set it once"):
        train(TrainConfig.from_dict({**config, "output": str(tmp_path / "a")}))
    summary = train(TrainConfig.from_dict({**config, "img_size": 32, "output": str(tmp_path / "b")}))
    assert vitkit.load(Path(summary["output"]) / "final").input_spec.img_size == (32, 32)
