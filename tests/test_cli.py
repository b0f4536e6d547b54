import json
import subprocess
import sys

import numpy as np
import pytest
import torch
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
    report = json.loads((out / "eval.json").read_text())["selected"]
    assert report["num_samples"] == 24 and report["top1"] >= 0.9  # val/ is the test set here; dark vs light is easy
    assert (out / "best" / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "test top-1: selected model" in printed and "best on validation" in printed


def test_predict_refuses_decompression_bombs_in_one_line(trained_digits, tmp_path, capsys, monkeypatch):
    bomb = tmp_path / "bomb.png"
    Image.new("L", (64, 64), 128).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over twice the limit, Pillow raises
    assert main(["predict", str(trained_digits / "best"), str(bomb)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read image {bomb}: " in err and "decompression bomb" in err
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # between 1x and 2x: Pillow only warns, predict refuses
    assert main(["predict", str(trained_digits / "best"), str(bomb)]) == 2
    assert "decompression bomb" in capsys.readouterr().err


def test_predict_scales_16bit_images(trained_digits, tmp_path, capsys):
    from sklearn.datasets import load_digits

    path = tmp_path / "zero16.png"
    Image.fromarray((load_digits().images[0] * 65535 / 16).astype(np.uint16)).save(path)  # mode I;16
    eight = tmp_path / "zero8.png"
    Image.fromarray((load_digits().images[0] * 255 / 16).round().astype(np.uint8)).save(eight)
    assert main(["predict", str(trained_digits / "best"), str(path), str(eight), "--topk", "10"]) == 0
    deep, shallow = ({name: float(p.rstrip("%")) for name, p in (pair.split() for pair in line.split(": ")[1]
                                                                  .split(", "))}
                     for line in capsys.readouterr().out.strip().splitlines())
    assert deep.keys() == shallow.keys() and all(abs(deep[k] - shallow[k]) < 0.3 for k in deep)  # not clipped


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "clip_grad=-1"], "clip_grad must be > 0"),
    (["--set", "weight_decay=-0.1"], "weight_decay must be >= 0"),
    (["--set", "warmup_epochs=-1"], "warmup_epochs must be >= 0"),
    (["--set", "ckpt_every=-5"], "ckpt_every must be >= 0"),
    (["--set", "max_steps=0"], "max_steps must be >= 1 or null"),
    (["--set", "crop_pct=1.5"], r"crop_pct must be in (0, 1], got 1.5"),
    (["--set", "epochs=2.5"], "epochs must be an integer, got 2.5 (float)"),
    (["--set", "amp=maybe"], "amp must be true, false or 'auto', got 'maybe'"),
    (["--set", "lr=fast"], "lr must be a number, got 'fast' (str)"),
    (["--set", "scale=[0.5]"], "scale must be a list of 2 numbers"),
    (["--val-split", "1.5"], "val_split must be a count of images, a fraction in (0, 1) or 0, got 1.5"),
    (["--device", "cuda"], "device 'cuda' requested but"),
    (["--device", "tpu9"], "device 'tpu9' is not a device torch knows"),
])
def test_train_refuses_bad_values_in_one_line_naming_the_key(tmp_path, capsys, args, message):
    if message.startswith("device 'cuda'") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "--output", str(tmp_path / "run"), *args]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_refuses_bad_yaml_and_an_output_holding_a_run_in_one_line(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("epochs: [1,\n")
    assert main(["train", "--config", str(recipe)]) == 2
    assert f"{recipe} is not valid YAML" in capsys.readouterr().err
    out = tmp_path / "run"
    (out / "best").mkdir(parents=True)
    assert main(["train", "--output", str(out)]) == 2
    assert "already holds a training run (best); give --resume to continue it, --overwrite" in _one_line_error(capsys)


def test_eval_on_the_validation_split_the_model_was_trained_with(trained_digits, tmp_path):
    assert main(["eval", str(trained_digits / "best"), "--data", "digits", "--split", "val", "--out",
                 str(tmp_path)]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["split"] == "val" and report["num_samples"] == 144  # a tenth of digits' 1,438 training images
