"""Timing and memory measurement: fixed threads, warm-up, interleaved repeats, medians, peak RSS."""

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import torch

_allocator = "default"  # what steady_allocator() did in this process, for the machine line


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(device: str = "cpu", threads: int | None = None) -> dict:
    from .._version import __version__

    info = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads or torch.get_num_threads(),
        "vitkit": __version__,
        "torch": torch.__version__, "python": platform.python_version(), "device": device,
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "allocator": _allocator,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line() -> str:
    i = machine_info()
    return (f"{i['cpu']}, {i['cores']} cores, torch {i['torch']}, {i['threads']} threads, {i['date'][:10]}, "
            f"allocator: {i['allocator']}")


def steady_allocator() -> str:
    """Keep glibc malloc from handing large tensors back to the kernel after every call.

    By default glibc serves big allocations with fresh mmap pages and trims the heap when they are freed,
    so each eager PyTorch forward at a large batch page-faults its activations in again: on this machine
    ~25,000 faults a call made the Fashion-MNIST model's batch-256 forward ~15% slower and twice as
    variable. onnxruntime keeps its own arena and never pays this, so a comparison without this step
    flatters it. A fixed mmap threshold (32 MiB, glibc's largest) and no trimming below 1 GiB is what a
    tuned deployment gets from jemalloc or tcmalloc. Call once per timing process; returns what was done."""
    import ctypes
    import ctypes.util

    global _allocator
    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or not name:
        _allocator = "system default (not glibc: left as is)"
    elif ctypes.CDLL(name).mallopt(-3, 32 * 2**20) != 1 or ctypes.CDLL(name).mallopt(-1, 2**30) != 1:
        _allocator = "glibc default (mallopt refused)"  # -3: M_MMAP_THRESHOLD, -1: M_TRIM_THRESHOLD
    else:
        _allocator = "glibc, mmap threshold 32 MiB, heap kept up to 1 GiB"
    return _allocator


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2,
                     min_run_s: float = 0.0, device: str = "cpu") -> dict[str, list[float]]:
    """Seconds per call of each function: `warmup` calls, then `repeats` rounds in which every function
    runs once, the order reversed every other round (ABBA) so that neither drift nor going first
    favours one side. With `min_run_s`, a round runs a fast function enough times in a row to last
    that long (timer resolution and call overhead would dominate a 1 ms call) and divides."""
    calls = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        once = max(time.perf_counter() - start, 1e-6)
        calls[name] = max(1, math.ceil(min_run_s / once)) if min_run_s else 1
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            fn, n = fns[name], calls[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) / n)
    return times


def summary(times: list[float], batch: int) -> dict[str, float]:
    median = statistics.median(times)
    return {"median_s": median, "min_s": min(times), "max_s": max(times), "img_per_s": batch / median}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size (Linux: clear_refs 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
