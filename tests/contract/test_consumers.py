"""Consumers work per family through the contract, or refuse with a reason."""

import pytest
import torch

import vitkit
from vitkit.models import list_models
from vitkit.training.optim import build_optimizer

HIERARCHICAL = [name for name in ("convnext_tiny", "swin_tiny_patch4_window7_224", "pvt_v2_b0", "caformer_s18")
                if name in list_models()]
SMALL = {"convnext_tiny": dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32)),
         "swin_tiny_patch4_window7_224": dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 1, 1, 1)),
         "pvt_v2_b0": dict(depths=(1, 1, 2, 1), embed_dims=(8, 16, 24, 32), num_heads=(1, 1, 1, 1)),
         "caformer_s18": dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), head_dim=8)}


@pytest.mark.parametrize("name", HIERARCHICAL)
def test_layer_decay_gives_each_stage_its_own_learning_rate(name):
    model = vitkit.create_model(name, num_classes=4, **SMALL[name])
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lr_of = {n: g["lr"] for g in optimizer.param_groups for p in g["params"] for n, q in model.named_parameters()
             if p is q}
    stage = "layers" if name.startswith("swin") else "stages"
    per_stage = [max(lr for n, lr in lr_of.items() if n.startswith(f"{stage}.{i}.")) for i in range(4)]
    assert per_stage == sorted(per_stage) and len(set(per_stage)) == 4, per_stage  # deeper stages learn faster
    assert max(lr for n, lr in lr_of.items() if n.startswith("head")) == pytest.approx(1e-3)
    assert min(lr_of.values()) < 1e-3 * 0.5 ** 4  # the stem, below every stage


@pytest.mark.parametrize("name", HIERARCHICAL)
def test_int8_and_bf16_work_and_token_reduction_is_refused(name):
    model = vitkit.create_model(name, num_classes=4, **SMALL[name]).eval()
    x = torch.randn(2, 3, *model.input_spec.img_size)
    with torch.no_grad():
        ref = model(x)
        assert vitkit.optimize(model, "int8")(x).shape == ref.shape
        assert vitkit.optimize(model, "bf16")(x).float().shape == ref.shape
    with pytest.raises(ValueError, match=r"tome needs a model whose blocks all see one token sequence; "
                                         r"\w+ is not one"):
        vitkit.optimize(model, "tome:r=2")


ONE_PER_FAMILY = ["vit_pico_patch4_32", *HIERARCHICAL]


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_onnx_export_matches_pytorch_for_every_family(name, tmp_path, onednn_for_every_size):
    pytest.importorskip("onnxruntime")
    from vitkit.efficiency.onnx_export import OnnxModel, export_onnx

    model = vitkit.create_model(name, num_classes=4, **SMALL.get(name, {})).eval()
    session = OnnxModel(export_onnx(model, tmp_path / "m.onnx"), model.config)
    for batch in (1, 3):  # the batch dimension is dynamic
        x = torch.randn(batch, 3, *model.input_spec.img_size)
        with torch.no_grad():
            assert (session(x) - model(x)).abs().max() < 1e-4


def test_a_checkpoint_of_another_family_is_one_mismatch_report(tmp_path):
    from safetensors.torch import save_file

    from vitkit.weights import CheckpointMismatchError

    convnext = vitkit.create_model("convnext_atto", num_classes=4)
    path = tmp_path / "convnext.safetensors"
    save_file({k: v.contiguous() for k, v in convnext.state_dict().items()}, str(path))
    with pytest.raises(CheckpointMismatchError, match=r"(?s)convnext.safetensors does not fit the model:.*"
                                                      r"missing \(\d+\): .*unexpected \(\d+\): .*stages\."):
        vitkit.create_model("vit_pico_patch4_32", num_classes=4, checkpoint=str(path))


TOWER = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
PEER_MODELS = {  # one tiny model of each family transformers has, as the bench builds its peer
    "convnext": ("convnext_tiny", dict(SMALL["convnext_tiny"], num_classes=4), 64),
    "convnextv2": ("convnextv2_atto", dict(SMALL["convnext_tiny"], num_classes=4), 64),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=2, window_size=4, embed_dim=8,
                                                  depths=(2, 2), num_heads=(1, 2), num_classes=4), 32),
    "dinov2": ("vit_small_patch14_reg4_dinov2", dict(TOWER, num_classes=0), 32),
    "clip": ("vit_base_patch16_clip_224", dict(TOWER, num_classes=16), 32),
    "siglip": ("vit_base_patch16_siglip_224", dict(TOWER, num_classes=0), 32),
    "vit": ("vit_pico_patch4_32", dict(num_classes=4), 32),
    "beit": ("beit_base_patch16_224", dict(TOWER, num_classes=4), 32),
    "pvt_v2": ("pvt_v2_b0", dict(SMALL["pvt_v2_b0"], num_classes=4), 64),
    "poolformer": ("poolformer_s12", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), output_norm="groupnorm1",
                                          norm_before_pool=True, num_classes=4), 64),
}


@pytest.mark.parametrize("family", PEER_MODELS)
def test_transformers_peer_reproduces_every_family(family):
    """`vitkit bench --peers hf`: transformers' model with our weights returns what ours returns (logits; a
    feature tower's pooled features; CLIP's projected embedding), and the bench worker's check accepts it."""
    pytest.importorskip("transformers")
    from vitkit.bench.variants import build_peer
    from vitkit.bench.worker import build

    name, overrides, size = PEER_MODELS[family]
    model = vitkit.create_model(name, **overrides).eval()
    with torch.no_grad():  # perturbed, so zero-initialised parameters matter (CLIP's projection has no bias)
        for key, p in model.named_parameters():
            if key != "head.bias" or family != "clip":
                p.add_(torch.randn_like(p) * 0.1)
    peer = build_peer(model, "hf")
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours = model(x)
        assert ours.shape == (2, overrides["num_classes"] or model.num_features)
        torch.testing.assert_close(peer(x), ours, atol=1e-4, rtol=0)
    build(model, "peer:hf", x, {"device": "cpu"})  # raises if the peer's output is not ours
