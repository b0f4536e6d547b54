import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vitkit.cli import main
from vitkit.training import TrainConfig, train


def test_info_prints_params_flops_tokens(capsys):
    assert main(["info", "vit_small_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "22.05 M (22,050,664)" in out
    assert "9.198 per image" in out
    assert "197 (196 patches + 1 prefix)" in out
    assert "3x224x224" in out


def test_unknown_model_is_an_error_with_suggestions(capsys):
    assert main(["info", "vit_smal_patch16_224"]) == 2
    assert "closest: vit_small_patch16_224" in capsys.readouterr().err


def test_list_filters_by_pattern(capsys):
    assert main(["list", "vit_*_patch4_28"]) == 0
    assert capsys.readouterr().out.split() == [
        "vit_micro_patch4_28", "vit_nano_patch4_28", "vit_pico_patch4_28", "vit_tiny_patch4_28"
    ]


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    cfg = TrainConfig(output=str(out), epochs=2, progress=False, model_kwargs={"embed_dim": 32, "depth": 1})
    train(cfg)
    return out


def test_eval_reports_table_json_and_png(trained_digits, tmp_path, capsys):
    assert main(["eval", str(trained_digits / "best"), "--data", "digits", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out and "loss" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["num_samples"] == 359 and set(report["per_class_accuracy"]) == {str(i) for i in range(10)}
    assert np.array(report["confusion"]).sum() == 359
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_refuses_mismatched_data(trained_digits, capsys):
    assert main(["eval", str(trained_digits / "best"), "--data", "synthetic"]) == 2
    assert "has 3 channel(s) and 10 classes; the model takes 1" in capsys.readouterr().err


def test_predict_prints_topk_class_names(trained_digits, tmp_path, capsys):
    from sklearn.datasets import load_digits

    digit = load_digits().images[0]  # a zero
    path = tmp_path / "zero.png"
    Image.fromarray((digit * 255 / 16).astype(np.uint8)).save(path)
    assert main(["predict", str(trained_digits / "best"), str(path), "--topk", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: ") and line.count("%") == 3
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["predict", str(trained_digits / "best"), str(bad)]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_train_cli_rejects_bad_set_and_unknown_option(capsys):
    assert main(["train", "--set", "epochs"]) == 2
    assert "--set expects key=value" in capsys.readouterr().err
    assert main(["train", "--set", "epoc=3"]) == 2
    assert "unknown training option(s): epoc" in capsys.readouterr().err
    assert main(["train", "--config", "nope"]) == 2
    assert "shipped recipe (digits" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "vitkit", "list", "deit_tiny*"], capture_output=True, text=True)
    assert result.returncode == 0 and "deit_tiny_distilled_patch16_224" in result.stdout


def test_train_on_a_folder_dataset_with_worker_processes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, level in (("dark", 40), ("light", 215)):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(12):
                pixels = np.clip(rng.normal(level, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "run"
    code = main(["train", "--model", "vit_pico_patch4_32", "--data", f"folder:{tmp_path / 'data'}", "--workers", "2",
                 "--epochs", "3", "--batch-size", "8", "--output", str(out), "--quiet", "--set", "lr=3e-3",
                 "--set", "eval_every=3"])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["num_samples"] == 24 and report["top1"] >= 0.9  # dark vs light is easy
    assert (out / "best" / "model.safetensors").is_file()
