"""Honest selection (validation, test once at the end) and no lost results: refused reuse of an
output directory, the run lock, checkpoint fallback, stale temporary files, permissions, full disks,
and checkpoints that cannot run code."""

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.training import TrainConfig, train
from vitkit.training.checkpoint import load_training_state
from vitkit.training.run_dir import RunDirectory, RunDirectoryBusy
from vitkit.weights import atomic_write

FAST = dict(model="vit_pico_patch4_32", data="synthetic:128", model_kwargs={"embed_dim": 32, "depth": 2,
            "num_heads": 2}, batch_size=32, epochs=2, lr=2e-3, warmup_epochs=1, drop_path=0.0, progress=False,
            auto_augment=None)


def config(out: Path, **overrides) -> TrainConfig:
    return TrainConfig.from_dict({**FAST, "output": str(out), **overrides})


def test_best_is_selected_on_val_and_test_is_evaluated_once_at_the_end(tmp_path, monkeypatch):
    import vitkit.training.objectives.supervised as supervised

    seen = []  # number of images of every evaluation, in order
    real = supervised.evaluate_classifier

    def recording(*args, **kwargs):
        report = real(*args, **kwargs)
        seen.append(report.num_samples)
        return report

    monkeypatch.setattr(supervised, "evaluate_classifier", recording)
    summary = train(config(tmp_path / "run", epochs=3, ema_decay=0.9))
    val_size, test_size = 13, 32  # synthetic:128 holds out 10% of its training images; its test split is 32
    assert seen[:-2] == [val_size] * 6  # 3 epochs x (model, ema), on validation only
    assert seen[-2:] == [test_size, test_size]  # the selected and the final model, once each
    out = tmp_path / "run"
    best = vitkit.load(out / "best")
    assert best.metadata["val_top1"] == summary["best_val_top1"]
    report = json.loads((out / "eval.json").read_text())
    assert report["selected_on"] == "val" and report["selected"]["dir"] == "best"
    assert report["selected"]["val_top1"] == summary["best_val_top1"]
    assert report["selected"]["num_samples"] == report["final"]["num_samples"] == test_size
    assert report["final"]["top1"] == summary["final_report"].top1


def test_val_split_zero_keeps_the_final_model_and_selects_nothing(tmp_path):
    summary = train(config(tmp_path / "run", val_split=0))
    out = tmp_path / "run"
    assert not (out / "best").exists()
    report = json.loads((out / "eval.json").read_text())
    assert report["selected_on"] is None and report["selected"]["dir"] == "final"
    assert report["selected"]["top1"] == report["final"]["top1"] == summary["final_report"].top1
    assert summary["best_val_top1"] is None


def test_an_output_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    train(config(out))
    before = (out / "final" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match=rf"output directory {out} already holds a training run "
                                              r"\(config.json, .*checkpoints.*\); give --resume .* --overwrite"):
        train(config(out, lr=1e-2))
    assert (out / "final" / "model.safetensors").read_bytes() == before  # nothing lost
    (out / "checkpoints" / "step-99999999.pt").write_bytes(b"an old run's late checkpoint")
    (out / "notes.txt").write_text("the user's own file")
    train(config(out, lr=1e-2, epochs=1), overwrite=True)
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-00000003.pt"]
    assert (out / "notes.txt").read_text() == "the user's own file"
    with pytest.raises(ValueError, match="give one of them"):
        train(config(out), resume=True, overwrite=True)


def test_a_second_concurrent_run_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "run"
    first = RunDirectory(out)
    first.acquire()
    try:
        with pytest.raises(RunDirectoryBusy, match=rf"{out} is in use by another training run \(pid {os.getpid()} "):
            train(config(out))
    finally:
        first.release()
    train(config(out))  # free again once the first run let go


def test_a_second_process_is_refused_while_a_run_holds_the_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from vitkit.training.run_dir import "
                               "RunDirectory; d = RunDirectory(sys.argv[1]); d.acquire(); print('held', flush=True); "
                               "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = subprocess.run([sys.executable, "-m", "vitkit", "train", "--output", str(out), "--epochs", "1",
                                 "--quiet"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert f"in use by another training run (pid {holder.pid} " in result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    out = tmp_path / "run"
    train(config(out, ckpt_every=1, keep_last=3, max_steps=3))
    newest = sorted((out / "checkpoints").glob("step-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # cut short, as by a full disk
    with pytest.warns(UserWarning) as caught:
        state = load_training_state(out)
    messages = [str(w.message) for w in caught]
    assert messages[0].startswith(f"skipping it: {newest} is not a readable vitkit training checkpoint")
    assert messages[1] == "resuming from step-00000002.pt, the newest readable checkpoint"
    assert state["global_step"] == 2
    with pytest.warns(UserWarning):
        train(config(out, ckpt_every=1, keep_last=3), resume=True)
    assert (out / "final" / "model.safetensors").is_file()


def test_resume_never_runs_code_from_a_checkpoint(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "payload": Payload()}, out / "checkpoints" / "step-00000001.pt")
    with pytest.raises(ValueError, match=r"none of the 1 training checkpoints under .* is readable"):
        with pytest.warns(UserWarning, match=r"step-00000001.pt is not a readable vitkit training checkpoint"):
            train(config(out), resume=True)
    assert not marker.exists()


def test_a_self_referencing_checkpoint_is_a_clear_error(tmp_path):
    state = {}
    state.update(model=state, optimizer={}, scheduler={}, epoch=0, step_in_epoch=0, global_step=0,
                 torch_rng=torch.get_rng_state())
    path = tmp_path / "step-00000001.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"step-00000001.pt is not a vitkit training checkpoint: its 'model' entry "
                                         r"is not a dict of tensors"):
        load_training_state(path)


def test_stale_temporary_files_are_removed_at_start(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / ".eval.json.abc123.tmp", out / "checkpoints" / ".step-00000004.pt.xyz.tmp"]
    for path in stale:
        path.write_bytes(b"half written")
    keep = out / "checkpoints" / "my.tmp"
    keep.write_text("not ours")
    with pytest.warns(UserWarning, match=r"removed 2 unfinished file\(s\) left by a killed write"):
        RunDirectory(out).acquire(resume=True)
    assert not any(path.exists() for path in stale) and keep.exists()


def test_saved_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        train(config(out, epochs=1))
    finally:
        os.umask(old)
    for path in [out / "eval.json", out / "best" / "model.safetensors", *(out / "checkpoints").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_full_disk_is_named_and_the_previous_file_kept(tmp_path):
    target = tmp_path / "eval.json"
    target.write_text("previous")

    def fill_disk(tmp):
        Path(tmp).write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=rf"cannot write {target}: the disk is full \(no space left on device\)"):
        atomic_write(target, fill_disk)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # no temporary file left behind
