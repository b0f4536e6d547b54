import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from vitkit.bench.timing import machine_line, steady_allocator
torch.set_num_threads(1)
if sys.argv[1] == "steady":
    steady_allocator()
x = torch.randn(64, 256, 256)  # 16 MiB activations: glibc's default serves them from fresh mmap pages
for _ in range(3):
    (x * 2).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    (x * 2).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(machine_line())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_steady_allocator_stops_page_faults_on_every_call():
    """Without it every large tensor is page-faulted in again; the benchmarks' baseline depends on this."""
    runs = {mode: subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
            for mode in ("default", "steady")}
    faults = {mode: int(r.stdout.splitlines()[0]) for mode, r in runs.items()}
    assert faults["default"] >= 4096 and faults["steady"] < faults["default"] / 20, faults
    assert "allocator: glibc, mmap threshold 32 MiB" in runs["steady"].stdout
    assert "allocator: default" in runs["default"].stdout
