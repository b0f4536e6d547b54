"""`vitkit probe`: features cached and reused (no forward pass the second time), every protocol on real data
(digits), report files, and bad input named."""

import json
import subprocess
import sys

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vitkit
import vitkit.probe.features as features_module
from vitkit.probe import FeatureCache, ProbeOptions, run_probe, write_all
from vitkit.probe.cache import FORMAT

PICO = {"embed_dim": 32, "depth": 2, "num_heads": 2, "conv_stem": [16, 32], "conv_stem_strides": [1, 2]}
FAST = dict(data="digits", linear_epochs=3, lrs=(1e-3, 1e-2), episodes=50, progress=False, blocks=2)


@pytest.fixture
def trained(trained_digits):
    """The digits recipe's model (conv stem, 4 blocks, mean-pooled, no class token), trained (conftest)."""
    return trained_digits


def _count_forwards(monkeypatch) -> list[int]:
    calls = []
    original = features_module._forward_batch

    def counting(model, images, *args):
        calls.append(len(images))
        return original(model, images, *args)

    monkeypatch.setattr(features_module, "_forward_batch", counting)
    return calls


def test_probe_compares_backbones_and_a_second_run_does_no_forward_pass(trained, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "cache", log=lambda m: None)
    specs = [str(trained), f"random:{trained}", "pixels"]
    calls = _count_forwards(monkeypatch)
    opts = ProbeOptions(protocols=("knn", "linear", "logreg", "fewshot"), ks=(5, 20), **FAST)
    first = run_probe(specs, opts, cache, log=lambda m: None)
    assert sum(calls) == 2 * (1294 + 144 + 359)  # two networks x every split, once each
    by_name = {r["backbone"]: r for r in first["results"]}
    trained_result, random_result = by_name[str(trained)], by_name[f"random:{trained}"]
    assert random_result["kind"] == "random init" and by_name["pixels"]["kind"] == "raw pixels"
    assert random_result["weights_sha256"] != trained_result["weights_sha256"]
    # trained features beat random ones on every protocol; digits pixels are already good for kNN
    for protocol in ("knn", "linear", "logreg"):
        assert trained_result[protocol]["test_top1"] > random_result[protocol]["test_top1"], protocol
    assert by_name["pixels"]["knn"]["test_top1"] > 0.9
    assert trained_result["knn"]["selected_k"] in (5, 20)
    assert len(trained_result["linear"]["val_top1"]) == 2 * 2  # 2 lrs x {last1, last2} patch means (no class token)
    shots = {e["shots"]: e for e in trained_result["fewshot"]}
    assert set(shots) == {1, 5} and shots[5]["mean"] > shots[1]["mean"] > 0.2

    calls.clear()
    second = run_probe(specs, opts, cache, log=lambda m: None)
    assert calls == [] and all(r["forward_images"] == 0 for r in second["results"])
    assert all(s["source"] == "cache" for r in second["results"] for s in r["features"].values())
    for a, b in zip(first["results"], second["results"], strict=True):
        assert a["knn"] == b["knn"] and a["linear"] == b["linear"] and a["fewshot"] == b["fewshot"]

    written = write_all(second, tmp_path / "report")
    names = {p.name for p in written}
    assert {"probe.json", "probe.csv", "probe.html", "probe.png"} <= names
    assert json.loads((tmp_path / "report" / "probe.json").read_text())["results"][2]["backbone"] == "pixels"
    csv_rows = (tmp_path / "report" / "probe.csv").read_text().splitlines()
    assert csv_rows[0].startswith("backbone,kind,protocol,test_top1") and len(csv_rows) > 10
    assert "<table>" in (tmp_path / "report" / "probe.html").read_text()


def test_corrupt_foreign_and_old_cache_entries(trained, tmp_path, monkeypatch):
    messages = []
    cache = FeatureCache(tmp_path / "cache", log=messages.append)
    opts = ProbeOptions(protocols=("knn",), ks=(5,), **FAST)
    run_probe([str(trained)], opts, cache, log=lambda m: None)
    entries = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(entries) == 3  # train, val, test
    calls = _count_forwards(monkeypatch)

    # truncated: recomputed (one split), never read
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    result = run_probe([str(trained)], opts, cache, log=lambda m: None)
    assert any("unreadable" in m and str(entries[0]) in m for m in messages)
    assert 0 < sum(calls) < 1294 + 144 + 359 and result["results"][0]["forward_images"] == sum(calls)

    # written by another format version: recomputed
    tensors = load_file(str(entries[1]))
    with safe_open(str(entries[1]), "pt") as f:
        meta = f.metadata()
    save_file(tensors, str(entries[1]), metadata={**meta, "format": "vitkit-features/0"})
    messages.clear()
    run_probe([str(trained)], opts, cache, log=lambda m: None)
    assert any("another version" in m and FORMAT in m for m in messages)

    # another backbone's features under this entry's name: a clear error naming the file
    other = vitkit.create_model("vit_pico_patch2_8", num_classes=0, **PICO)
    with safe_open(str(entries[2]), "pt") as f:
        meta = f.metadata()
    key = json.loads(meta["key"])
    key["weights"] = vitkit.probe.weights_hash(other)
    save_file(load_file(str(entries[2])), str(entries[2]), metadata={**meta, "key": json.dumps(key)})
    with pytest.raises(ValueError, match=f"feature cache {entries[2]} holds features of another weights"):
        run_probe([str(trained)], opts, cache, log=lambda m: None)


def test_float16_cache_and_feature_choices(trained, tmp_path):
    cache = FeatureCache(tmp_path / "cache", log=lambda m: None)
    opts32 = ProbeOptions(protocols=("knn",), ks=(5,), tokens="patch_mean", **FAST)
    opts16 = ProbeOptions(protocols=("knn",), ks=(5,), tokens="patch_mean", feature_dtype="float16", **FAST)
    a = run_probe([str(trained)], opts32, cache, log=lambda m: None)["results"][0]
    b = run_probe([str(trained)], opts16, cache, log=lambda m: None)["results"][0]
    assert b["forward_images"] > 0  # a float16 entry is its own entry
    assert abs(a["knn"]["test_top1"] - b["knn"]["test_top1"]) < 0.02
    sizes = {p.stat().st_size for p in (tmp_path / "cache").glob("*.safetensors")}
    assert len(sizes) > 1


def test_bad_input_is_named(trained, tmp_path):
    cache = FeatureCache(tmp_path / "cache", log=lambda m: None)
    with pytest.raises(ValueError, match="blocks=9: .* has 4 blocks/stages .* expected a count from 1 to 4"):
        run_probe([str(trained)], ProbeOptions(**{**FAST, "blocks": 9}), cache, log=lambda m: None)
    with pytest.raises(ValueError, match=r"k=5000 is larger than the kNN bank \(1294 training images of digits\)"):
        run_probe(["pixels"], ProbeOptions(protocols=("knn",), ks=(5000,), **FAST), cache, log=lambda m: None)
    with pytest.raises(ValueError, match="unknown protocol"):
        ProbeOptions(data="digits", protocols=("knn", "svm"))
    with pytest.raises(ValueError, match="no_such_model' is neither a model directory nor a registered model"):
        run_probe(["no_such_model"], ProbeOptions(**FAST), cache, log=lambda m: None)
    with pytest.raises(ValueError, match="best has no class token: use --tokens patch_mean or pooled"):
        run_probe([str(trained)], ProbeOptions(**{**FAST, "tokens": "cls"}), cache, log=lambda m: None)
    with pytest.raises(ValueError, match="raw pixels have no tokens"):
        run_probe(["pixels"], ProbeOptions(**{**FAST, "tokens": "cls"}), cache, log=lambda m: None)


def test_cli_probe_writes_the_report_and_errors_are_one_line(trained, tmp_path):
    env_cache = ["--cache-dir", str(tmp_path / "cache")]
    cmd = [sys.executable, "-m", "vitkit", "probe", str(trained), "pixels", "--data", "digits", "--protocols",
           "knn,fewshot", "--k", "5,20", "--episodes", "50", "--out", str(tmp_path / "out"), "--quiet", *env_cache]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| pixels | raw pixels |" in done.stdout and "forward passes: 1797 images" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "forward passes: 0 images" in again.stdout
    bad = subprocess.run([*cmd[:5], "--data", "digits", "--shots", "200", "--protocols", "fewshot", *env_cache],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "vitkit probe: error:" in bad.stderr and "200" in bad.stderr
