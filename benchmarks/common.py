"""Shared timing helpers: fixed threads, warm-up, interleaved repeats, medians."""

import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date

import torch


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{date.today().isoformat()}")


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2) -> dict[str, list[float]]:
    """Run each function `warmup` times, then `repeats` rounds, reversing the order every other round
    (ABBA) so that neither drift nor going first favours one side."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            fn = fns[name]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def summary(times: list[float], batch: int) -> dict[str, float]:
    median = statistics.median(times)
    return {"median_s": median, "min_s": min(times), "max_s": max(times), "img_per_s": batch / median}
