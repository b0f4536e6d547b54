"""Hostile inputs: checkpoints that refer to themselves, config.json files that ask for absurd models,
metadata that cannot work, modules planted in the current directory, and CSV cells that a spreadsheet
would run as formulas. Each fails with one clear error, or is made harmless."""

import csv
import io
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.bench import make_plan
from vitkit.bench.report import _csv_value
from vitkit.bench.runner import Display, run_worker
from vitkit.data.transforms import saved_model_eval_transform
from vitkit.weights import loading
from vitkit.weights.io import read_state_dict

# ------------------------------------------------------------------------------ nested checkpoints


def test_a_checkpoint_that_holds_itself_is_refused(tmp_path):
    d = {}
    d["model"] = d  # the pickle memo makes this a real self-reference on load
    torch.save(d, tmp_path / "self.pth")
    with pytest.raises(vitkit.CorruptCheckpointError, match=r"self\.pth refers to itself: its 'model' entry"):
        read_state_dict(tmp_path / "self.pth")
    a, b = {}, {}
    a["state_dict"], b["model"] = b, a  # a cycle of two
    torch.save(a, tmp_path / "cycle.pth")
    with pytest.raises(vitkit.CorruptCheckpointError, match=r"cycle\.pth refers to itself"):
        vitkit.create_model("vit_pico_patch4_32", checkpoint=str(tmp_path / "cycle.pth"))


class _DeepPickle:
    """A pickle module for torch.save that writes {"model": {"model": ... {}}} n levels deep as raw opcodes
    (pickling such a dict for real recurses once per level)."""

    Unpickler = pickle.Unpickler

    class Pickler:
        def __init__(self, f, protocol=2):
            self.f = f

        def dump(self, n):
            self.f.write(b"\x80\x02" + b"}X\x05\x00\x00\x00model" * n + b"}" + b"s" * n + b".")


@pytest.mark.parametrize("depth", [20, 10_000])
def test_a_deeply_nested_checkpoint_is_refused(tmp_path, depth):
    path = tmp_path / "deep.pth"
    torch.save(depth, path, pickle_module=_DeepPickle)
    with pytest.raises(vitkit.CorruptCheckpointError,
                       match=r"deep\.pth is nested more than 8 levels deep \(dicts within dicts\); expected"):
        read_state_dict(path)


def test_weights_nested_a_few_levels_still_load(tmp_path):
    state_dict = vitkit.create_model("vit_pico_patch4_32").state_dict()
    torch.save({"epoch": 3, "state_dict": {"model": state_dict}}, tmp_path / "ok.pth")
    assert read_state_dict(tmp_path / "ok.pth").keys() == state_dict.keys()


def test_a_pickle_too_deep_to_unpickle_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "deep.pth").write_bytes(b"x")

    def recurse(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(torch, "load", recurse)
    with pytest.raises(vitkit.CorruptCheckpointError, match=r"deep\.pth is nested too deeply to read"):
        read_state_dict(tmp_path / "deep.pth")


# ------------------------------------------------------------------------------ config.json bounds


@pytest.fixture
def saved(tmp_path) -> Path:
    model = vitkit.create_model("vit_pico_patch4_32")
    return vitkit.save(model, tmp_path / "m", metadata={"class_names": list("abcdefghij"), "mean": [0.5] * 3,
                                                        "std": [0.25] * 3, "crop_pct": 0.875})


def edit_config(directory: Path, config=None, metadata=None) -> Path:
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    raw["config"].update(config or {})
    raw["metadata"].update(metadata or {})
    path.write_text(json.dumps(raw))
    return path


def never_read(monkeypatch):
    """Fail the test if the weights are read or the real model is built: the error must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the weights were read before the config was checked")
    monkeypatch.setattr(loading, "read_state_dict", refuse)


@pytest.mark.parametrize("field, value, expected", [
    ("depth", 1_000_000, "an integer from 1 to 512"),
    ("embed_dim", 10**7, "an integer from 1 to 16384"),
    ("num_classes", -1, "an integer from 0 to 1000000"),
    ("mlp_ratio", 1e9, r"a number in \(0, 64\]"),
    ("depth", "12", "an integer from 1 to 512"),
    ("conv_stem", [64] * 1000, "a list of at most 8 channel counts"),
])
def test_absurd_model_sizes_in_config_json_are_refused_before_allocating(saved, monkeypatch, field, value,
                                                                            expected):
    path = edit_config(saved, {field: value})
    never_read(monkeypatch)
    shown = re.escape(repr(value)[:50])
    with pytest.raises(ValueError, match=rf"{path}: {field}={shown}.* is out of range; expected {expected}"):
        vitkit.load(saved)


def test_too_many_patch_tokens_are_refused(saved, monkeypatch):
    never_read(monkeypatch)
    with pytest.raises(ValueError, match=r"config\.json with overrides \{'img_size': 8192\}: img_size=8192 with "
                                         "patch_size=4 makes 4194304 patch tokens; expected at most 65536"):
        vitkit.load(saved, img_size=8192)
    path = edit_config(saved, {"img_size": 8192, "patch_size": 4})
    with pytest.raises(ValueError, match=rf"{path}: img_size=8192 with patch_size=4 makes 4194304 patch tokens; "
                                         r"expected at most 65536 \(a 256x256 grid\)"):
        vitkit.load(saved)


def test_a_config_that_does_not_describe_its_weights_fails_before_they_are_read(saved, monkeypatch):
    edit_config(saved, {"depth": 400, "embed_dim": 4096, "num_heads": 64})  # in range, but ~80 G parameters
    never_read(monkeypatch)
    with pytest.raises(vitkit.CheckpointMismatchError, match=r"does not fit the model:\n  missing \(\d+\): "
                                                             r"blocks\.10\.attn\.proj\.bias"):
        vitkit.load(saved)
    with pytest.raises(ValueError, match=r"the config describes [\d,]+ parameters that .*model\.safetensors does "
                                         r"not supply \(it holds [\d,]+\); expected a config that fits its weights"):
        vitkit.load(saved, strict=False)


def test_legitimate_loads_still_work(saved):
    assert vitkit.load(saved).metadata["class_names"][0] == "a"
    assert vitkit.load(saved, img_size=64).pos_embed.shape == (1, 1 + 256, 64)  # resampled
    assert vitkit.load(saved, in_chans=1).patch_embed.proj.weight.shape[1] == 1  # channels adapted
    with pytest.warns(UserWarning, match="left 2 model tensors as initialised"):
        assert vitkit.load(saved, num_classes=5, strict=False).head.out_features == 5


def test_a_truncated_weights_file_is_reported_from_its_header(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(vitkit.CorruptCheckpointError, match=r"model\.safetensors is not a readable safetensors file "
                                                            r"\(truncated or corrupt\?\)"):
        vitkit.load(saved)


def test_config_json_that_is_not_an_object_is_a_clear_error(saved):
    (saved / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json holds a JSON list; expected an object"):
        vitkit.load(saved)
    (saved / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        vitkit.load(saved)


# ------------------------------------------------------------------------------ metadata used at inference


@pytest.mark.parametrize("metadata, message", [
    ({"std": [0.0, 0.2, 0.2]}, r"metadata std=\[0\.0, 0\.2, 0\.2\] is invalid; expected every value > 0"),
    ({"std": [-1, -1, -1]}, r"metadata std=\[-1, -1, -1\] is invalid; expected every value > 0"),
    ({"std": 0}, r"metadata std=0 is invalid; expected a list of finite numbers"),
    ({"mean": [0.5, 0.5]}, r"metadata mean has 2 values; expected one per input channel \(in_chans=3\)"),
    ({"crop_pct": 0}, r"metadata crop_pct=0 is out of range; expected a number in \(0, 1\]"),
    ({"crop_pct": 1.5}, r"metadata crop_pct=1\.5 is out of range; expected a number in \(0, 1\]"),
    ({"class_names": ["a", "b"]}, r"metadata class_names has 2 names but the model has num_classes=10; expected "
                                  "one name per class"),
])
def test_unusable_saved_metadata_is_refused(saved, metadata, message):
    path = edit_config(saved, metadata=metadata)
    with pytest.raises(ValueError, match=rf"{path}: {message}"):
        vitkit.load(saved)


def test_the_eval_transform_refuses_unusable_metadata():
    config = vitkit.create_model("vit_pico_patch4_32").input_spec
    with pytest.raises(ValueError, match=r"saved model metadata \(config\.json\): metadata std=\[0, 1, 1\] is "
                                         r"invalid; expected every value > 0"):
        saved_model_eval_transform(config, {"std": [0, 1, 1]})
    with pytest.raises(ValueError, match=r"metadata crop_pct=-0\.5 is out of range"):
        saved_model_eval_transform(config, {"crop_pct": -0.5})
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    assert saved_model_eval_transform(config, {"crop_pct": None})(images).shape == (1, 3, 32, 32)


# ------------------------------------------------------------------------------ modules in the current directory


@pytest.fixture
def planted(tmp_path, monkeypatch) -> Path:
    """A directory whose json.py writes a marker when imported, made the current directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    marker = tmp_path / "marker"
    (cwd / "json.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    subprocess.run([sys.executable, "-c", "import json"], cwd=cwd, env=env, check=True)
    assert marker.is_file(), "the planted module is not imported even unprotected: the test proves nothing"
    marker.unlink()
    monkeypatch.chdir(cwd)
    return marker


def test_bench_workers_do_not_import_modules_from_the_current_directory(planted, tmp_path):
    plan = make_plan("vit_pico_patch4_32", timeout_s=60)
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = run_worker({"kind": "probe", "threads": 1}, workdir, plan, Display(1, enabled=False))
    assert result["complete"] and "KeyError" in result["error"]  # the worker ran (and failed on the bad job)
    assert not planted.exists()


def test_torchrun_and_its_workers_do_not_import_modules_from_the_current_directory(planted, monkeypatch, capfd):
    from vitkit.cli import _launch_torchrun

    monkeypatch.setattr(sys, "argv", ["vitkit", "--nproc", "1", "--help"])
    assert _launch_torchrun(1) == 0
    assert "usage: vitkit" in capfd.readouterr().out  # the worker ran vitkit
    assert not planted.exists()


# ------------------------------------------------------------------------------ CSV formula injection


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped():
    assert _csv_value("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    for text in ("+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert _csv_value(text) == "'" + text
    assert _csv_value("vit_pico tome:r=1") == "vit_pico tome:r=1"
    assert _csv_value(-0.5) == "-0.5" and _csv_value(-3) == -3 and _csv_value(None) == ""
    out = io.StringIO()
    csv.writer(out).writerow([_csv_value(v) for v in ("=1+1", -0.5)])
    assert out.getvalue().strip() == "'=1+1,-0.5"
