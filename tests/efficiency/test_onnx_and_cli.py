import json

import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.efficiency.onnx_export import OnnxModel, export_onnx, quantize_onnx_int8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = vitkit.create_model("vit_pico_patch4_28").eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "pico.onnx")
    return model, path


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_pytorch_with_dynamic_batch(exported, batch):
    model, path = exported
    session = OnnxModel(path)
    x = torch.randn(batch, 1, 28, 28)
    with torch.no_grad():
        assert (session(x) - model(x)).abs().max() <= 1e-4


def test_onnx_int8_is_close_and_smaller_with_the_head_float(exported, tmp_path):
    import onnx

    model, path = exported
    q = quantize_onnx_int8(path, tmp_path / "int8.onnx")
    assert q.stat().st_size < 0.6 * path.stat().st_size
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        ref, out = model(x), OnnxModel(q)(x)
    assert 0 < (ref - out).abs().max() < 0.1 * ref.abs().max()
    graph = onnx.load(str(q)).graph
    # the head's weights stay float (onnxruntime renames them, e.g. head.weight_Transposed in 1.32): every
    # initializer shaped like the head's weight, either way round, is float, and there is at least one
    head_shapes = {tuple(model.head.weight.shape), tuple(model.head.weight.shape)[::-1]}
    head_like = [i for i in graph.initializer if tuple(i.dims) in head_shapes]
    assert head_like and all(i.data_type == onnx.TensorProto.FLOAT for i in head_like)
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) == 4 * len(model.blocks)


def test_static_int8_uses_the_calibration_ranges(exported, tmp_path):
    import onnx

    model, path = exported
    calibration = [torch.randn(8, 1, 28, 28) for _ in range(3)]
    q = quantize_onnx_int8(path, tmp_path / "static.onnx", calibration=calibration, static_linear=True)
    ops = [n.op_type for n in onnx.load(str(q)).graph.node]
    assert ops.count("QLinearMatMul") == 4 * len(model.blocks) and "DynamicQuantizeLinear" not in ops
    assert ops.count("Conv") == 1  # the patch embedding, the only convolution, stays float
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        ref, out = model(x), OnnxModel(q)(x)
    assert 0 < (ref - out).abs().max() < 0.1 * ref.abs().max()
    with pytest.raises(ValueError, match="static_linear needs calibration"):
        quantize_onnx_int8(path, tmp_path / "x.onnx", static_linear=True)


def test_calibration_makes_the_conv_stem_int8_except_its_first_stage(tmp_path):
    """Stem stages after the first become QLinearConv from the calibration ranges; the first sees the raw
    image and stays float, the linear layers stay dynamic, and the result stays close to float."""
    import onnx

    torch.manual_seed(0)
    model = vitkit.create_model("vit_pico_convstem_28").eval()
    path = export_onnx(model, tmp_path / "stem.onnx")
    images = torch.randn(64, 1, 28, 28)
    q = quantize_onnx_int8(path, tmp_path / "stem8.onnx", calibration=[images[:32], images[32:]])
    ops = [n.op_type for n in onnx.load(str(q)).graph.node]
    stages = len(model.config.conv_stem)
    assert ops.count("Conv") == 1 and ops.count("QLinearConv") == stages  # stages 2.. and the 1x1 projection
    assert ops.count("MatMulInteger") == 4 * len(model.blocks) and "QLinearMatMul" not in ops
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        ref, out = model(x), OnnxModel(q)(x)
    assert 0 < (ref - out).abs().max() < 0.1 * ref.abs().max()
    dynamic = [n.op_type for n in onnx.load(str(quantize_onnx_int8(path, tmp_path / "d.onnx"))).graph.node]
    assert dynamic.count("Conv") == stages + 1 and "QLinearConv" not in dynamic  # no ranges: convs float


def test_onnx_export_works_under_no_grad(tmp_path, onednn_for_every_size):
    """Inference code paths (the chunked MLP, oneDNN linear layers) must not put guards on the symbolic batch
    size, nor end up in the graph."""
    model = vitkit.create_model("vit_pico_patch4_28").eval()
    with torch.no_grad():
        path = export_onnx(model, tmp_path / "m.onnx")
        x = torch.randn(30, 1, 28, 28)  # 30 x 50 token rows: the chunked MLP's size in eager
        assert (OnnxModel(path)(x) - model(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("spec", ["tome:r=6", "evit:keep=0.5:blocks=[1,2],tome:r=[0,0,4,4]"])
def test_token_reduction_exports_and_matches_pytorch(spec, tmp_path):
    """The number of tokens per block depends only on the image size, so merging and pruning are one
    static graph; which tokens go where is decided inside it, per image."""
    fast = vitkit.optimize(vitkit.create_model("vit_pico_patch4_28").eval(), spec)
    path = export_onnx(fast, tmp_path / "fast.onnx")
    session = OnnxModel(path)
    for batch in (1, 6):
        x = torch.randn(batch, 1, 28, 28)
        with torch.no_grad():
            ref = fast(x)
        assert (session(x) - ref).abs().max() <= 1e-4
    with torch.no_grad():
        plain = vitkit.create_model("vit_pico_patch4_28").eval()
        plain.load_state_dict(fast.state_dict())
        assert (plain(x) - ref).abs().max() > 1e-3  # the graph really reduces tokens


@pytest.mark.parametrize("spec, message", [("int8", "quantize the ONNX file"), ("bf16", "float32 model")])
def test_onnx_export_refuses_torch_precision(spec, message, tmp_path):
    fast = vitkit.optimize(vitkit.create_model("vit_pico_patch4_28").eval(), spec)
    with pytest.raises(ValueError, match=message):
        export_onnx(fast, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("spec", [[], ["--spec", "tome:r=2"]])
def test_cli_export_checks_top1_on_a_test_set(trained_digits, tmp_path, capsys, spec):
    out = tmp_path / "m.onnx"
    assert main(["export", str(trained_digits), "--onnx", str(out), "--data", "digits", *spec]) == 0
    text = capsys.readouterr().out
    assert out.is_file()
    assert f"spec {spec[1] if spec else 'none'}," in text
    line = next(x for x in text.splitlines() if x.startswith("digits test"))
    same, total = line.split("identical for ")[1].split(",")[0].split("/")
    assert same == total and int(total) > 300
    worst = float(line.split("max |diff| ")[1])
    assert worst <= 1e-4


def test_cli_optimize_then_eval_with_spec(trained_digits, tmp_path, capsys):
    out = tmp_path / "opt"
    assert main(["optimize", str(trained_digits), "--spec", "tome:r=2,int8", "--out", str(out)]) == 0
    assert "top-1 agreement" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["metadata"]["optimize"] == "tome:r=2,int8"
    loaded = vitkit.load(out)
    assert loaded.blocks[0].token_reducer.r == 2

    assert main(["eval", str(trained_digits), "--data", "digits", "--spec", "tome:r=2", "--out", str(tmp_path / "e"),
                 "--merge-maps", "3"]) == 0
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert report["spec"] == "tome:r=2" and report["top1"] > 0.75
    assert len(list((tmp_path / "e" / "merge_maps").glob("*.png"))) == 3


def test_cli_bad_spec_fails_before_loading(tmp_path, capsys):
    assert main(["optimize", str(tmp_path / "missing"), "--spec", "tome:q=1", "--out", str(tmp_path / "o")]) == 2
    assert "valid parameters: r, schedule" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_export_refuses_torch_precision_in_the_spec(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "missing"), "--onnx", str(out), "--spec", "tome:r=2,int8"]) == 2
    err = capsys.readouterr().err
    assert "token reduction only" in err and "--int8" in err
    assert not out.exists()


def test_cli_static_int8_calibrates_on_the_train_split(trained_digits, tmp_path, capsys):
    out = tmp_path / "static.onnx"
    args = ["export", str(trained_digits), "--onnx", str(out), "--int8", "--calibrate", "128", "--data", "digits"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "static convolutions, dynamic linear layers" in text
    line = next(x for x in text.splitlines() if x.startswith("digits test"))
    same, total = map(int, line.split("identical for ")[1].split(",")[0].split("/"))
    assert same >= 0.95 * total
    assert main(["export", str(trained_digits), "--onnx", str(tmp_path / "x.onnx"), "--calibrate", "128"]) == 2
    assert "needs --int8, --data" in capsys.readouterr().err
    assert main(["export", str(trained_digits), "--onnx", str(tmp_path / "x.onnx"), "--int8", "--static-linear"]) == 2
    assert "--static-linear needs --calibrate" in capsys.readouterr().err
