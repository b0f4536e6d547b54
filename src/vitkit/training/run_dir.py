"""A training run's output directory: one run at a time (a lock held for the whole run), an old run
never silently replaced, and leftovers of killed writes cleared at start."""

import fcntl
import os
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path

LOCK_NAME = ".vitkit-train.lock"
# What a training run writes; --overwrite removes exactly these, nothing else the directory holds.
RUN_FILES = ("config.json", "metrics.jsonl", "eval.json", "confusion.png")
RUN_DIRS = ("checkpoints", "best", "final", "final_ema", "tensorboard")
TEMP_GLOB = ".*.tmp"  # vitkit.weights.atomic_write's temporary files


class RunDirectoryBusy(RuntimeError):
    pass


class RunDirectory:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_file = None

    def acquire(self, resume: bool = False, overwrite: bool = False) -> None:
        """Take the lock, then check the directory against what was asked: a new run needs an empty
        one (or `overwrite`), `resume` needs a previous run."""
        if resume and overwrite:
            raise ValueError("--resume continues the run in the output directory and --overwrite starts over: "
                             "give one of them")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            held = self.previous_run()
            if held and not (resume or overwrite):
                raise FileExistsError(
                    f"output directory {self.path} already holds a training run ({', '.join(held)}); give "
                    "--resume to continue it, --overwrite to remove it and start over, or another --output")
            if overwrite and held:
                self._remove_run()
            self._remove_stale_temp_files()
        except BaseException:
            self.release()
            raise

    def previous_run(self) -> list[str]:
        return [name for name in (*RUN_FILES, *RUN_DIRS) if (self.path / name).exists()]

    def release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _lock(self) -> None:
        lock_path = self.path / LOCK_NAME
        handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirectoryBusy(f"output directory {self.path} is in use by another training run ({holder}); "
                                   "wait for it to finish or choose another --output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n")
        handle.flush()
        self._lock_file = handle

    def _remove_run(self) -> None:
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)

    def _remove_stale_temp_files(self) -> None:
        """Temporary files of writes that were killed before their rename (we hold the lock, so no
        other run is writing them now)."""
        removed = []
        for directory in (self.path, *(self.path / name for name in RUN_DIRS)):
            if directory.is_dir():
                for tmp in directory.glob(TEMP_GLOB):
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp.name)
        if removed:
            warnings.warn(f"removed {len(removed)} unfinished file(s) left by a killed write in {self.path}: "
                          f"{', '.join(removed[:5])}", stacklevel=3)
