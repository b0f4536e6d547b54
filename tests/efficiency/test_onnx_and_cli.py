import json

import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.efficiency.onnx_export import OnnxModel, export_onnx, quantize_onnx_int8
from vitkit.training import TrainConfig, load_recipe, train


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    recipe = {**load_recipe("digits"), "output": str(out), "epochs": 15, "eval_every": 15, "progress": False}
    train(TrainConfig.from_dict(recipe))  # ~20 s to ~90% top-1
    return out / "best"


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


def test_onnx_int8_is_close_and_smaller(exported, tmp_path):
    model, path = exported
    q = quantize_onnx_int8(path, tmp_path / "int8.onnx")
    assert q.stat().st_size < 0.6 * path.stat().st_size
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        ref, out = model(x), OnnxModel(q)(x)
    assert 0 < (ref - out).abs().max() < 0.1 * ref.abs().max()


def test_onnx_export_refuses_token_reduction(tmp_path):
    fast = vitkit.optimize(vitkit.create_model("vit_pico_patch4_28").eval(), "tome:r=2")
    with pytest.raises(ValueError, match="without tome/evit"):
        export_onnx(fast, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_cli_export_checks_top1_on_a_test_set(trained_digits, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(trained_digits), "--onnx", str(out), "--data", "digits"]) == 0
    text = capsys.readouterr().out
    assert out.is_file()
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
