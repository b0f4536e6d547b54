"""Consumers work per family through the contract, or refuse with a reason."""

import pytest
import torch

import vitkit
from vitkit.models import list_models
from vitkit.training.optim import build_optimizer

HIERARCHICAL = [name for name in ("convnext_tiny", "swin_tiny_patch4_window7_224") if name in list_models()]
SMALL = {"convnext_tiny": dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32)),
         "swin_tiny_patch4_window7_224": dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 1, 1, 1))}


@pytest.mark.parametrize("name", HIERARCHICAL)
def test_layer_decay_gives_each_stage_its_own_learning_rate(name):
    model = vitkit.create_model(name, num_classes=4, **SMALL[name])
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lr_of = {n: g["lr"] for g in optimizer.param_groups for p in g["params"] for n, q in model.named_parameters()
             if p is q}
    stage = "stages" if name.startswith("convnext") else "layers"
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
    with pytest.raises(ValueError, match=r"tome needs a plain ViT whose blocks all see one token sequence; "
                                         r"\w+ is not one"):
        vitkit.optimize(model, "tome:r=2")


ONE_PER_FAMILY = ["vit_pico_patch4_32", *HIERARCHICAL]


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_onnx_export_matches_pytorch_for_every_family(name, tmp_path):
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
