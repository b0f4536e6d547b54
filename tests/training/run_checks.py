"""The two equivalences every objective's training must keep, as reusable checks: a run killed mid-way and
resumed ends with the weights of an uninterrupted one, and 2 DDP processes end with the weights of 1 at
the same global batch. `command(out, *extra)` is the CLI argv of a short run writing to `out`."""

import os
import signal
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def assert_same_final_weights(want_dir: Path, got_dir: Path, atol: float, rtol: float) -> None:
    want, got = load_file(want_dir / "final" / "model.safetensors"), load_file(got_dir / "final" / "model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=atol, rtol=rtol)


def _killed_after_first_checkpoint(command, out: Path) -> Path:
    """Start a run writing a checkpoint every 3 steps and SIGKILL it once the first one is on disk."""
    proc = subprocess.Popen(command(out, "--ckpt-every", "3"), env=_env(1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "checkpoints").glob("step-*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run finished before it could be killed"
    return out


def assert_killed_run_resumes(command, tmp_path: Path, last_checkpoint: str | None = None) -> None:
    reference = tmp_path / "uninterrupted"
    subprocess.run(command(reference), check=True, env=_env(1), capture_output=True)
    resumed = _killed_after_first_checkpoint(command, tmp_path / "resumed")
    if last_checkpoint is not None:
        assert sorted((resumed / "checkpoints").glob("step-*.pt"))[-1].name != last_checkpoint  # killed mid-run
    subprocess.run(command(resumed, "--ckpt-every", "3", "--resume"), check=True, env=_env(1), capture_output=True)
    assert_same_final_weights(reference, resumed, atol=1e-6, rtol=1e-5)


def assert_two_processes_match_one(command, tmp_path: Path, *extra: str) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(command(one, *extra), check=True, env=_env(2), capture_output=True)
    result = subprocess.run(command(two, *extra, "--nproc", "2"), env=_env(1), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_final_weights(one, two, atol=1e-5, rtol=1e-4)


def assert_resume_and_ddp_match_one_run(command, tmp_path: Path) -> None:
    """Both equivalences against one uninterrupted single-process run (one thread, as each DDP worker):
    killed after its first checkpoint and resumed, and 2 processes at the same global batch."""
    reference = tmp_path / "uninterrupted"
    subprocess.run(command(reference), check=True, env=_env(1), capture_output=True)
    resumed = _killed_after_first_checkpoint(command, tmp_path / "resumed")
    subprocess.run(command(resumed, "--ckpt-every", "3", "--resume"), check=True, env=_env(1), capture_output=True)
    assert_same_final_weights(reference, resumed, atol=1e-6, rtol=1e-5)
    two = tmp_path / "two"
    result = subprocess.run(command(two, "--nproc", "2"), env=_env(1), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_final_weights(reference, two, atol=1e-5, rtol=1e-4)
