"""`vitkit bench`: the request checked before anything runs, every output written, failures recorded
while the rest continue, the peer reproducing our outputs, and the HTML report in a real browser."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitkit
from browser import render
from vitkit.bench import make_plan, run_bench
from vitkit.bench.report import COLUMNS, mark_pareto, pareto_front, write_report
from vitkit.bench.runner import Display, run_worker
from vitkit.bench.variants import build_variant, flop_variant

pytest.importorskip("transformers", reason="transformers is a dev dependency: pip install -e .[dev]")

DIGITS_TEST = 359  # scikit-learn's digits, vitkit's fixed test split
BATCH_OOM = 2_000_000  # with --memory-limit-mb 3000 this batch cannot fit: a real out-of-memory failure


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    """A saved 8x8 gray 10-class model for digits (random weights: the test checks the plumbing)."""
    model = vitkit.create_model("vit_pico_patch4_32", img_size=8, patch_size=2, in_chans=1, num_classes=10)
    return vitkit.save(model, tmp_path_factory.mktemp("ckpt") / "digits_vit")


@pytest.fixture(scope="module")
def bench_out(trained_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "report"
    out.mkdir()
    (out / "results.json").write_text("{}")  # an earlier report: it is replaced as a whole
    (out / "old-marker.txt").write_text("from an earlier run")
    cmd = [sys.executable, "-m", "vitkit", "--threads", "1", "bench", "--checkpoint", str(trained_dir),
           "--specs", "none,tome:r=1,evit:keep=0.5:blocks=[9],int8,onnx-int8-static", "--peers", "hf,timm",
           "--data", "digits",
           "--batch-sizes", f"1,4,{BATCH_OOM}", "--memory-limit-mb", "3000", "--quick", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (out.parent / "stderr.txt").write_text(result.stderr)
    return out


def rows_of(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["rows"]


def find(rows, impl="vitkit", spec="none", batch=4) -> dict:
    return next(r for r in rows if (r["impl"], r["spec"], r["infer_batch_size"]) == (impl, spec, batch))


# ------------------------------------------------------------------------------------ checked up front


def test_every_bad_input_is_reported_at_once_before_running():
    with pytest.raises(ValueError) as err:
        make_plan("vit_tiny_patch16_244,vit_pico_patch4_32", "none,tome:x=3,warp", peers="hf,onnx", batch_sizes="1,0")
    text = str(err.value)
    assert "unknown model 'vit_tiny_patch16_244'" in text and "vit_tiny_patch16_224" in text  # a suggestion
    assert "unknown parameter 'x' for 'tome'" in text and "unknown spec item 'warp'" in text
    assert "unknown peer 'onnx'" in text and "--batch-sizes" in text


def test_accuracy_needs_a_trained_model_and_a_matching_dataset(trained_dir):
    with pytest.raises(ValueError, match="registry models have random weights"):
        make_plan("vit_pico_patch4_32", data="digits")
    with pytest.raises(ValueError, match="from 1-channel images, but synthetic:100 has 10 classes of 3-channel"):
        make_plan([], checkpoint=str(trained_dir), data="synthetic:100")


def test_plan_canonicalises_specs_and_puts_the_baseline_first():
    plan = make_plan("vit_pico_patch4_32", "tome:r=2+int8, onnx, none, TOME:r=2 + int8,int8", quick=True)
    assert plan.variants == ["none", "tome:r=2,int8", "onnx", "int8"]  # ',' separates specs, '+' joins items
    assert plan.batch_sizes == [1, 8] and plan.repeats >= 5


def test_token_reduction_runs_in_onnxruntime_too(tmp_path):
    plan = make_plan("vit_pico_patch4_32", "TOME:r=2 + onnx-int8, evit:keep=0.5+onnx", quick=True)
    assert plan.variants == ["none", "tome:r=2,onnx-int8", "evit:keep=0.5,onnx"]
    with pytest.raises(ValueError) as err:
        make_plan("vit_pico_patch4_32", "int8+onnx,onnx+onnx-int8")
    assert "does not take int8" in str(err.value) and "names 2 runtimes" in str(err.value)
    with pytest.raises(ValueError, match="onnx-int8-static calibrates on training images"):
        make_plan("vit_pico_patch4_32", "onnx-int8-static")  # random weights, no data to calibrate on

    model = vitkit.create_model("vit_pico_patch4_32").eval()
    x = torch.randn(3, 3, 32, 32)
    in_torch = build_variant(model, "tome:r=2", x, tmp_path)
    in_ort = build_variant(model, "tome:r=2,onnx", x, tmp_path)
    plain_ort = build_variant(model, "onnx", x, tmp_path)
    with torch.no_grad():
        assert (in_ort(x) - in_torch(x)).abs().max() <= 1e-4
        assert (plain_ort(x) - model(x)).abs().max() <= 1e-4  # one file per spec, not the first one reused
    assert flop_variant("tome:r=2,onnx-int8") == "tome:r=2"


def test_cli_refuses_unknown_names_without_touching_out(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "vitkit", "bench", "--models", "no_such_model", "--specs",
                             "tome:r=2,zap", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown model 'no_such_model'" in result.stderr and "'zap'" in result.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------------ the run


def test_all_outputs_are_written_and_the_old_directory_replaced(bench_out):
    names = {p.name for p in bench_out.iterdir()}
    assert names == {"results.json", "results.csv", "report.html", "pareto.png", "throughput_vs_batch.png",
                     "memory.png"}
    assert not list(bench_out.parent.glob(".report.*")), "temporary directories left behind"
    with open(bench_out / "results.csv") as f:
        header = next(csv.reader(f))
    assert header == COLUMNS
    for timm_column in ("model", "infer_samples_per_sec", "infer_step_time", "infer_batch_size", "infer_img_size",
                        "infer_gmacs", "param_count"):
        assert timm_column in header
    results = json.loads((bench_out / "results.json").read_text())
    assert results["machine"]["threads"] == 1 and results["machine"]["torch"]
    assert results["machine"]["allocator"].startswith("glibc, mmap threshold")  # set in the timing process
    assert "stderr.txt" in os.listdir(bench_out.parent)
    progress = (bench_out.parent / "stderr.txt").read_text()
    assert "[1/" in progress and "ETA" in progress


def test_measurements_are_complete_for_working_configurations(bench_out):
    rows = rows_of(bench_out)
    for spec in ("none", "tome:r=1", "int8"):
        for batch in (1, 4):
            r = find(rows, spec=spec, batch=batch)
            assert r["status"] == "ok", r
            assert r["infer_samples_per_sec_min"] <= r["infer_samples_per_sec"] <= r["infer_samples_per_sec_max"]
            assert 0 < r["latency_p50_ms"] <= r["latency_p95_ms"]
            assert r["peak_memory_mb"] > 50 and r["param_count"] > 0 and r["gflops"] > 0
            assert r["infer_gmacs"] == pytest.approx(r["gflops"] / 2, rel=1e-3)
            assert 0 <= r["top1"] <= 1 and r["loss"] > 0 and r["eval_samples"] == DIGITS_TEST
    assert find(rows, spec="none")["vs_none"] == 1.0
    static = find(rows, spec="onnx-int8-static")  # calibrated on the digits train split in the worker
    assert static["status"] == "ok" and abs(static["top1"] - find(rows)["top1"]) <= 0.05
    # ToMe does less arithmetic; int8 the same arithmetic at lower precision
    assert find(rows, spec="tome:r=1")["gflops"] < find(rows, spec="none")["gflops"]
    assert find(rows, spec="int8")["gflops"] == find(rows, spec="none")["gflops"]


def test_transformers_peer_has_the_same_weights_and_ratios_are_shown(bench_out):
    rows = rows_of(bench_out)
    ours, peer = find(rows), find(rows, impl="transformers")
    assert peer["status"] == "ok"
    assert peer["top1"] == ours["top1"] and peer["loss"] == pytest.approx(ours["loss"], abs=1e-5)
    assert peer["param_count"] == ours["param_count"]
    assert ours["vs_transformers"] == pytest.approx(ours["infer_samples_per_sec"] / peer["infer_samples_per_sec"])


def test_timm_that_does_not_import_is_a_note_not_a_failure(bench_out):
    results = json.loads((bench_out / "results.json").read_text())
    try:
        import timm  # noqa: F401
    except Exception:  # noqa: BLE001
        assert any(n.startswith("timm skipped: it does not import here") for n in results["notes"])
        assert not any(r["impl"] == "timm" for r in results["rows"])
    else:
        assert find(results["rows"], impl="timm")["top1"] == find(results["rows"])["top1"]


def test_failures_are_recorded_everywhere_and_the_rest_continue(bench_out):
    results = json.loads((bench_out / "results.json").read_text())
    rows = results["rows"]
    broken = [r for r in rows if r["spec"] == "evit:keep=0.5:blocks=[9]"]
    assert broken and all(r["status"] == "failed" and "out of range" in r["error"] for r in broken)
    oom = [r for r in rows if r["infer_batch_size"] == BATCH_OOM]
    assert oom and all(r["status"] == "failed" and r["error"] for r in oom)
    assert any("allocate" in r["error"] or "memory" in r["error"].lower() for r in oom)
    assert len(results["failed"]) == len(broken) + len([r for r in oom if r not in broken])
    with open(bench_out / "results.csv") as f:
        csv_failed = [r for r in csv.DictReader(f) if r["status"] == "failed"]
    assert len(csv_failed) == len(results["failed"]) and all(r["error"] for r in csv_failed)
    html = (bench_out / "report.html").read_text()
    assert "out of range" in html and html.count('class="failed"') == len(results["failed"])


def test_pareto_set_is_marked_on_accuracy_when_measured(bench_out):
    results = json.loads((bench_out / "results.json").read_text())
    assert results["pareto_axes"] == ["infer_samples_per_sec", "top1"]
    ok4 = [r for r in results["rows"] if r["infer_batch_size"] == 4 and r["status"] == "ok"]
    front = [r for r in ok4 if r["pareto"]]
    assert front
    for r in ok4:  # nothing beats a Pareto row on both speed and accuracy
        if r["pareto"]:
            assert not any(o["infer_samples_per_sec"] > r["infer_samples_per_sec"] and o["top1"] > r["top1"]
                           for o in ok4)
    assert (bench_out / "report.html").read_text().count('class="pareto"') == sum(
        r["pareto"] for r in results["rows"] if r["status"] == "ok")


# ------------------------------------------------------------------------------------------ pieces


def test_pareto_front_keeps_exactly_the_undominated_points():
    points = [(1, 5), (2, 4), (3, 3), (2, 2), (1, 4), (3, 3)]
    assert pareto_front(points) == [0, 1, 2, 5]


def test_without_accuracy_the_front_trades_speed_against_memory():
    rows = [{"infer_batch_size": 1, "status": "ok", "infer_samples_per_sec": s, "peak_memory_mb": m}
            for s, m in [(10, 100), (20, 300), (15, 400)]]
    assert mark_pareto(rows) == "peak_memory_mb"
    assert [r["pareto"] for r in rows] == [True, True, False]


def test_a_failed_report_write_leaves_the_old_report_untouched(bench_out, tmp_path, monkeypatch):
    out = tmp_path / "kept"
    shutil.copytree(bench_out, out)
    before = (out / "results.json").read_text()
    results = json.loads(before)
    import vitkit.bench.report as report

    def broken_plot(*args):
        raise OSError("disk full")
    monkeypatch.setattr(report, "plot_all", broken_plot)
    with pytest.raises(OSError, match="disk full"):
        write_report(results, out)
    assert (out / "results.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_a_worker_that_hangs_is_stopped_and_recorded(tmp_path):
    plan = make_plan("vit_pico_patch4_32", timeout_s=0.5)
    job = {"kind": "probe", "key": "none", "model": {"source": "vit_pico_patch4_32", "is_checkpoint": False,
           "in_chans": 3, "img_size": 32}, "threads": 1, "device": "cpu", "workdir": str(tmp_path),
           "batch_sizes": [1]}
    assert run_worker(job, tmp_path, plan, Display(1, enabled=False)) == {"error": "timed out after 0.5 s"}


# ------------------------------------------------------------------------------------------ the browser


def test_report_renders_in_a_real_browser_with_plots_and_no_console_errors(bench_out):
    dom, console = render(bench_out / "report.html")
    assert 'data-plots-loaded="3"' in dom and 'data-plots-failed="0"' in dom
    assert "<table>" in dom and "tome:r=1" in dom
    assert console == []
    assert "http://" not in (bench_out / "report.html").read_text()  # self-contained: nothing to fetch
    assert "https://" not in (bench_out / "report.html").read_text()


def test_the_browser_check_catches_a_broken_plot_and_a_console_error(bench_out, tmp_path):
    html = (bench_out / "report.html").read_text()
    start = html.index('src="data:image/png;base64,') + len('src="data:image/png;base64,')
    broken = html[:start] + "AAAA" + html[html.index('"', start):]
    broken = broken.replace("<script>", '<script>console.error("boom");', 1)
    (tmp_path / "broken.html").write_text(broken)
    dom, console = render(tmp_path / "broken.html")
    assert 'data-plots-failed="1"' in dom
    assert any("boom" in line for line in console)


def test_a_worker_killed_mid_way_keeps_what_it_saved(tmp_path, monkeypatch):
    """A fake interpreter stands in for a worker the kernel kills (as the OOM killer would) after it
    saved its first batch size."""
    fake = tmp_path / "fake-python"
    # the result path is the last argument, whatever interpreter flags come first
    fake.write_text('#!/bin/sh\nfor last; do :; done\necho \'{"memory_mb": {"1": 250.0}}\' > "$last"\nkill -9 $$\n')
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    plan = make_plan("vit_pico_patch4_32")
    result = run_worker({"kind": "probe"}, tmp_path, plan, Display(1, enabled=False))
    assert result == {"memory_mb": {"1": 250.0}, "error": "worker killed by SIGKILL (out of memory?)"}


@pytest.mark.parametrize("make_out, message", [
    (lambda tmp: tmp / "project", "not an earlier vitkit bench report"),
    (lambda tmp: Path("."), "current directory or above it"),
])
def test_out_that_is_not_a_report_is_refused_before_running(tmp_path, monkeypatch, make_out, message):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "precious.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        run_bench(make_plan("vit_pico_patch4_32"), make_out(tmp_path), progress=False)
    assert (tmp_path / "project" / "precious.txt").read_text() == "keep me"


def test_each_row_says_what_happened_to_its_own_batch_size():
    """A probe killed at batch 64 after batch 1 worked; accuracy failing on a timed variant (partial); a
    variant that never built."""
    from vitkit.bench.plan import ModelEntry
    from vitkit.bench.report import model_rows

    plan = make_plan("vit_pico_patch4_32", "none,tome:r=2,int8", batch_sizes="1,64")
    entry = ModelEntry("m", "vit_pico_patch4_32", False, 32, 3, 10)
    timing = {"median_s": 0.01, "min_s": 0.009, "max_s": 0.02, "img_per_s": 100.0}
    raw = {"keys": ["none", "tome:r=2", "int8"], "probe": {
        "none": {"memory_mb": {"1": 200.0}, "error": "worker killed by SIGKILL (out of memory?)"},
        "tome:r=2": {"memory_mb": {"1": 210.0, "64": 300.0}, "complete": True},
        "int8": {"error": "RuntimeError: no quantized engine"},
    }, "measure": {
        "none": {"throughput": {"1": timing}, "latency_ms": {"p50": 9.0, "p95": 12.0}},
        "tome:r=2": {"throughput": {"1": timing, "64": timing}, "partial_errors": ["accuracy not measured: X"]},
    }}
    rows = {(r["spec"], r["infer_batch_size"]): r for r in model_rows(plan, entry, raw)}
    assert rows["none", 1]["status"] == "ok" and rows["none", 1]["peak_memory_mb"] == 200.0
    assert rows["none", 64]["status"] == "failed" and "SIGKILL" in rows["none", 64]["error"]
    assert rows["tome:r=2", 64]["status"] == "partial" and "accuracy not measured" in rows["tome:r=2", 64]["error"]
    for batch in (1, 64):
        assert rows["int8", batch]["status"] == "failed" and "quantized engine" in rows["int8", batch]["error"]


def test_every_family_transformers_has_gets_its_peer_in_the_plan(tmp_path):
    """Registry names and saved models of families without an img_size (ConvNeXt) too: sizes come from the
    model's input_spec."""
    saved = vitkit.save(vitkit.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), num_classes=3,
                                            in_chans=1), tmp_path / "tiny_convnext")
    plan = make_plan("convnext_atto,convnextv2_atto,swin_tiny_patch4_window7_224,vit_small_patch14_dinov2,"
                     "vit_pico_convstem_32", checkpoint=str(saved), peers="hf", quick=True)
    entries = {e.name: e for e in plan.models}
    for name in ("convnext_atto", "convnextv2_atto", "swin_tiny_patch4_window7_224", "vit_small_patch14_dinov2"):
        assert entries[name].peer_keys == ["peer:hf"], plan.notes
    assert (entries["convnext_atto"].img_size, entries["convnext_atto"].in_chans,
            entries["convnext_atto"].num_classes) == (224, 3, 1000)
    assert entries["vit_small_patch14_dinov2"].img_size == 518
    tiny = entries["tiny_convnext"]
    assert (tiny.is_checkpoint, tiny.img_size, tiny.in_chans, tiny.num_classes, tiny.peer_keys) == (
        True, 224, 1, 3, ["peer:hf"])
    assert entries["vit_pico_convstem_32"].peer_keys == []
    assert any("vit_pico_convstem_32: no transformers ViT/DeiT equals this model: it has conv_stem" in n
               for n in plan.notes)
