"""`run_bench(plan, out)`: each model's variants probed for memory one process each, then measured
together in one process; failures recorded, never fatal; the report written at the end."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..reporting import check_output_dir
from .plan import BenchPlan
from .report import assemble, write_report
from .timing import machine_info
from .worker import PROGRESS


class Display:
    """One line per step with elapsed time and ETA; the worker's own progress lines indented under it."""

    def __init__(self, total: int, enabled: bool = True, stream=sys.stderr):
        self.total, self.enabled, self.stream = total, enabled, stream
        self.done, self.start = 0, time.perf_counter()

    def step(self, text: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = f", ETA {elapsed / (self.done - 1) * (self.total - self.done + 1):.0f}s" if self.done > 1 else ""
        self.line(f"[{self.done}/{self.total}] {text} ({elapsed:.0f}s{eta})")

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)


def _worker_setup(limit_mb: int | None):
    """Run in the child before exec: the kernel's OOM killer should pick a worker, never the parent;
    with a limit, an allocation past it fails inside the worker (a clean out-of-memory error)."""
    def apply():
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        if limit_mb:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit_mb * 2**20, limit_mb * 2**20))
    return apply


def run_worker(job: dict, workdir: Path, plan: BenchPlan, display: Display) -> dict:
    """Run one job in a fresh interpreter and return what it saved. However it ends early (an exception,
    a crash, killed for memory, timed out), the result carries "error" saying how, beside whatever
    it had saved before."""
    fd, job_path = tempfile.mkstemp(suffix=".json", dir=workdir)
    os.close(fd)
    job_path = Path(job_path)
    result_path = job_path.with_name(job_path.stem + "-result.json")
    job_path.write_text(json.dumps(job))
    # -P and PYTHONSAFEPATH=1 (for anything the worker starts, e.g. compile workers): never import modules
    # from the current directory, where a stray json.py or torch.py would otherwise run in the worker
    env = {**os.environ, "OMP_NUM_THREADS": str(plan.threads), "PYTHONWARNINGS": "ignore", "PYTHONSAFEPATH": "1"}
    proc = subprocess.Popen([sys.executable, "-P", "-m", "vitkit.bench.worker", str(job_path), str(result_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_worker_setup(plan.memory_limit_mb), start_new_session=True)
    tail: list[str] = []

    def read_stderr():
        for line in proc.stderr:
            if line.startswith(PROGRESS):
                display.line("    " + line.removeprefix(PROGRESS).rstrip())
            else:
                tail.append(line.rstrip())
                del tail[:-30]
    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    timed_out = False
    try:
        code = proc.wait(timeout=plan.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: compile workers and the like too
        code = proc.wait()
    reader.join(5)
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if result.get("complete"):
        return result
    if timed_out:
        result["error"] = f"timed out after {plan.timeout_s:g} s"
    elif code < 0:
        name = signal.Signals(-code).name
        result["error"] = f"worker killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    else:
        text = "\n".join(tail)
        last = next((t for t in reversed(tail) if t.strip()), "")
        kind = "out of memory" if "MemoryError" in text or "can't allocate memory" in text else "worker failed"
        result["error"] = f"{kind} (exit code {code}): {last[:300]}"
    return result


def run_bench(plan: BenchPlan, out: str | os.PathLike, progress: bool = True, command: str | None = None) -> dict:
    """Measure everything in `plan` and write the report to `out` (replaced only once it is complete)."""
    out = check_output_dir(Path(out), "vitkit bench")
    notes = list(plan.notes)
    keys = {e.name: list(plan.variants) + e.peer_keys for e in plan.models}
    display = Display(sum(len(k) + 1 for k in keys.values()), progress)
    display.line(f"vitkit bench: {len(plan.models)} model(s) x {len(plan.variants)} spec(s)"
                 f"{' + peers' if plan.peers else ''}, batch sizes {plan.batch_sizes}, {plan.threads} threads")
    for note in plan.notes:
        display.line(f"  note: {note}")
    raw, allocators = {}, set()
    with tempfile.TemporaryDirectory(prefix="vitkit-bench-") as tmp:
        for index, entry in enumerate(plan.models):
            workdir = Path(tmp) / f"model{index}"
            workdir.mkdir()
            data = plan.data if entry.is_checkpoint else None
            common = {"model": vars(entry), "threads": plan.threads, "device": plan.device, "seed": 0,
                      "workdir": str(workdir), "batch_sizes": plan.batch_sizes, "data": data}
            probes = {}
            for key in keys[entry.name]:
                display.step(f"{entry.name} {key}: peak memory")
                probes[key] = run_worker({**common, "kind": "probe", "key": key}, workdir, plan, display)
                note = probes[key].get("memory_note")
                if note and note not in notes:
                    notes.append(note)
            runnable = {k: [b for b in plan.batch_sizes if isinstance(probes[k].get("memory_mb", {}).get(str(b)),
                                                                       int | float)] for k in keys[entry.name]}
            runnable = {k: v for k, v in runnable.items() if v}
            measured = measure_all(common, runnable, data, plan, workdir, display, entry.name, notes, allocators)
            raw[entry.name] = {"keys": keys[entry.name], "probe": probes, "measure": measured}
    for entry in plan.models:
        spec = entry.saved_spec
        if spec:
            notes.append(f"{entry.name} was saved by `vitkit optimize` with spec {spec!r}; it is measured from its "
                         "float weights under the specs given here")
    machine = machine_info(plan.device, plan.threads)
    machine["allocator"] = ", ".join(sorted(allocators)) or machine["allocator"]  # set in the timing processes
    results = assemble(plan, raw, notes, machine, command)
    try:
        write_report(results, out)
    except BaseException:
        fd, rescue = tempfile.mkstemp(prefix="vitkit-bench-results-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(results, f)
        display.line(f"vitkit bench: the report could not be written; the measurements are saved in {rescue}")
        raise
    display.line(f"vitkit bench: wrote {out}/report.html, results.json, results.csv and plots")
    return results


def measure_all(common: dict, keys: dict[str, list[int]], data: str | None, plan: BenchPlan, workdir: Path,
                display: Display, name: str, notes: list[str], allocators: set[str]) -> dict:
    """Time all variants in one process (`keys`: variant -> the batch sizes its probe could run); if that
    process dies, each variant alone, so the rest continue. Adds the timing processes' allocator setting
    to `allocators`."""
    display.step(f"{name}: throughput, latency{', accuracy' if data else ''} of {len(keys)} variant(s)")
    if not keys:
        return {}
    job = {**common, "kind": "measure", "keys": list(keys), "batch_sizes_by_key": keys, "data": data,
           "eval_limit": plan.eval_limit,
           "timing": {"repeats": plan.repeats, "warmup": plan.warmup, "min_run_s": plan.min_run_s,
                      "latency_runs": plan.latency_runs}}
    result = run_worker(job, workdir, plan, display)
    allocators.update([result["allocator"]] if "allocator" in result else [])
    if "error" not in result:
        return result["variants"]
    display.line(f"    measuring together failed ({result['error']}); measuring each variant alone")
    notes.append(f"{name}: measuring all variants in one process failed ({result['error']}); each was measured "
                 "in its own process, so its ratios carry run-to-run drift")
    alone = {}
    for key in keys:
        one = run_worker({**job, "keys": [key]}, workdir, plan, display)
        allocators.update([one["allocator"]] if "allocator" in one else [])
        alone[key] = one.get("variants", {}).get(key, {})
        if "error" in one:
            alone[key]["error"] = one["error"]
    return alone


