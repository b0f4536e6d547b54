"""One `vitkit bench` job in its own process, so that its peak memory is its own and a crash or an
out-of-memory kill takes only this job down.

    python -m vitkit.bench.worker JOB.json RESULT.json

Jobs: `probe` builds one variant and records peak memory at each batch size; `measure` builds all of a
model's variants and times them interleaved in this one process (ratios between them are fair), then
latency, FLOPs, parameters and accuracy.
"""

import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from ..evaluation import count_flops, count_params
from .timing import peak_rss_mb, percentile, reset_peak_rss, summary, time_interleaved
from .variants import build_peer, build_variant, flop_variant

PROGRESS = "vitkit-bench: "


def say(text: str) -> None:
    print(PROGRESS + text, file=sys.stderr, flush=True)


def error_text(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def load_base(job: dict) -> torch.nn.Module:
    import vitkit

    torch.manual_seed(job.get("seed", 0))  # registry models: the same random weights in every process
    entry = job["model"]
    if entry["is_checkpoint"]:
        model = vitkit.load(entry["source"], optimized=False)
    else:
        model = vitkit.create_model(entry["source"])
    return model.eval().to(job["device"])


def build(base, key: str, example, job: dict):
    """`key` is a variant ('none', 'tome:r=8,int8', 'onnx') or 'peer:hf' / 'peer:timm'."""
    if key.startswith("peer:"):
        return build_peer(base, key.removeprefix("peer:")).to(job["device"])
    return build_variant(base, key, example, Path(job["workdir"]) / "onnx")


def example_batch(entry: dict, batch: int, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, entry["in_chans"], entry["img_size"], entry["img_size"], generator=generator)
    return x.to(device)


def probe(job: dict) -> dict:
    """Peak memory of one variant alone: weights, runtime and activations, at each batch size."""
    device, entry = job["device"], job["model"]
    base = load_base(job)
    model = build(base, job["key"], example_batch(entry, 2, device), job)
    del base
    gc.collect()
    cuda = device.startswith("cuda")
    memory = {}
    for batch in job["batch_sizes"]:
        x = example_batch(entry, batch, device)
        gc.collect()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        elif not reset_peak_rss():
            memory["note"] = "peak RSS could not be reset: each value is the peak so far"
        try:
            with torch.inference_mode():
                for _ in range(2):
                    model(x)
            memory[str(batch)] = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
        except (RuntimeError, MemoryError) as err:
            memory[str(batch)] = {"error": error_text(err)}
        shown = memory[str(batch)]
        say(f"{job['key']} batch {batch}: " + (f"{shown:.0f} MiB" if isinstance(shown, float) else shown["error"]))
        del x
    return {"memory_mb": memory, "memory_kind": "cuda_max_allocated" if cuda else "peak_rss"}


def measure(job: dict) -> dict:
    device, entry = job["device"], job["model"]
    base = load_base(job)
    results, modules = {}, {}
    for key in job["keys"]:
        start = time.perf_counter()
        try:
            modules[key] = build(base, key, example_batch(entry, 2, device), job)
            results[key] = {"build_s": time.perf_counter() - start}
        except Exception as err:  # noqa: BLE001 - one variant that cannot be built must not stop the rest
            results[key] = {"error": error_text(err)}
        say(f"built {key}" + (f": {results[key]['error']}" if "error" in results[key] else ""))

    shape = (entry["in_chans"], entry["img_size"], entry["img_size"])
    flops_cache = {}
    for key, module in modules.items():
        r = results[key]
        try:
            if key.startswith("peer:"):
                r["params"], r["flops"] = count_params(module), count_flops(module, shape)
            else:
                spec = flop_variant(key)
                if spec not in flops_cache:
                    flops_cache[spec] = count_flops(build_variant(base, spec, example_batch(entry, 2, device),
                                                                  Path(job["workdir"])), shape)
                r["params"], r["flops"] = count_params(base), flops_cache[spec]
        except Exception as err:  # noqa: BLE001 - a count that fails is left out, the timing still runs
            r["flops_error"] = error_text(err)

    opts = job["timing"]
    with torch.inference_mode():
        for batch in job["batch_sizes"]:
            x = example_batch(entry, batch, device)
            runnable = {}
            for key, module in modules.items():
                try:
                    module(x)
                    runnable[key] = lambda m=module, x=x: m(x)
                except (RuntimeError, MemoryError) as err:
                    results[key].setdefault("batch_errors", {})[str(batch)] = error_text(err)
            times = time_interleaved(runnable, repeats=opts["repeats"], warmup=opts["warmup"],
                                     min_run_s=opts["min_run_s"], device=device)
            for key, t in times.items():
                results[key].setdefault("throughput", {})[str(batch)] = summary(t, batch)
            say(f"batch {batch}: " + ", ".join(f"{k} {summary(t, batch)['img_per_s']:.1f} img/s"
                                               for k, t in times.items()))
        x = example_batch(entry, 1, device)
        runnable = {k: (lambda m=m, x=x: m(x)) for k, m in modules.items()
                    if "1" not in results[k].get("batch_errors", {})}
        times = time_interleaved(runnable, repeats=opts["latency_runs"], warmup=opts["warmup"], device=device)
        for key, t in times.items():
            results[key]["latency_ms"] = {"p50": percentile(t, 50) * 1e3, "p95": percentile(t, 95) * 1e3}
        say("latency at batch 1 done")

    if job.get("data"):
        evaluate(job, base, modules, results)
    return {"variants": results}


def evaluate(job: dict, base, modules: dict, results: dict) -> None:
    from ..data import build_dataset
    from ..data.transforms import saved_model_eval_transform
    from ..evaluation.classification import evaluate_classifier
    from ..training.data_stream import eval_batches

    dataset = build_dataset(job["data"], "test")
    if job.get("eval_limit") and job["eval_limit"] < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(job["eval_limit"]))  # the first N: the same for all
        info = dataset.dataset.info
    else:
        info = dataset.info
    transform = saved_model_eval_transform(base.config, getattr(base, "metadata", None) or {}, info.mean, info.std)
    for key, module in modules.items():
        try:
            with torch.inference_mode():
                report = evaluate_classifier(module, eval_batches(dataset, transform, 256), info.num_classes)
            results[key].update(top1=report.top1, loss=report.loss, eval_samples=report.num_samples)
            say(f"accuracy {key}: {report.top1 * 100:.2f}%")
        except Exception as err:  # noqa: BLE001
            results[key]["eval_error"] = error_text(err)


def main(argv: list[str]) -> int:
    job_path, result_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    torch.set_num_threads(job["threads"])
    try:
        result = probe(job) if job["kind"] == "probe" else measure(job)
    except Exception as err:  # noqa: BLE001 - the parent records it; the traceback goes to stderr
        traceback.print_exc()
        result = {"error": error_text(err)}
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
