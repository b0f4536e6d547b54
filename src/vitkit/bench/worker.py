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
from .timing import peak_rss_mb, percentile, reset_peak_rss, steady_allocator, summary, time_interleaved
from .variants import build_peer, build_variant, flop_variant, needs_calibration

PROGRESS = "vitkit-bench: "


def say(text: str) -> None:
    print(PROGRESS + text, file=sys.stderr, flush=True)


def error_text(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def load_base(job: dict) -> torch.nn.Module:
    from ..weights import create_model, load

    torch.manual_seed(job.get("seed", 0))  # registry models: the same random weights in every process
    entry = job["model"]
    if entry["is_checkpoint"]:
        model = load(entry["source"])
    else:
        model = create_model(entry["source"])
    return model.eval().to(job["device"])


PEER_TOLERANCE = 1e-3  # a peer further than this from vitkit's output did not get the same weights


CALIBRATION_IMAGES = 1024  # onnx-int8-static: training images its activation ranges are fixed from


def build(base, key: str, example, job: dict):
    """`key` is a variant ('none', 'tome:r=8,int8', 'onnx') or 'peer:hf' / 'peer:timm'. A peer is checked
    against vitkit's own output on `example` (logits, or a feature tower's pooled features: whatever the
    model returns, of any family): the comparison is only fair with the same weights."""
    if not key.startswith("peer:"):
        if needs_calibration(key) and job.get("data") and "calibration" not in job:
            from ..efficiency.onnx_export import calibration_batches

            job["calibration"] = calibration_batches(base, job["data"], CALIBRATION_IMAGES)  # once per process
        return build_variant(base, key, example, Path(job["workdir"]) / "onnx", job.get("calibration"))
    peer = build_peer(base, key.removeprefix("peer:")).to(job["device"])
    with torch.inference_mode():
        theirs, ours = peer(example), base(example)
    if theirs.shape != ours.shape:
        raise ValueError(f"{key} returns shape {tuple(theirs.shape)} where vitkit returns {tuple(ours.shape)}: it is "
                         "not the same model, so it is not compared")
    diff = (theirs.float() - ours.float()).abs().max().item()
    if not diff <= PEER_TOLERANCE:
        raise ValueError(f"{key} outputs differ from vitkit's by {diff:.3g} on the same input: the weights did not "
                         "map onto the peer, so it is not compared")
    return peer


def example_batch(entry: dict, batch: int, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, entry["in_chans"], entry["img_size"], entry["img_size"], generator=generator)
    return x.to(device)


def probe(job: dict, save) -> dict:
    """Peak memory of one variant alone: weights, runtime and activations, at each batch size. The result
    is saved after every batch size, so if the process is killed the parent still has the ones before."""
    device, entry = job["device"], job["model"]
    base = load_base(job)
    model = build(base, job["key"], example_batch(entry, 2, device), job)
    del base
    gc.collect()
    cuda = device.startswith("cuda")
    result = {"memory_mb": {}, "memory_kind": "cuda_max_allocated" if cuda else "peak_rss"}
    for batch in job["batch_sizes"]:
        gc.collect()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        elif not reset_peak_rss():
            result["memory_note"] = "peak RSS could not be reset here: each value is the peak so far"
        try:
            x = example_batch(entry, batch, device)
            with torch.inference_mode():
                for _ in range(2):
                    model(x)
            del x
            value = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
            say(f"{job['key']} batch {batch}: {value:.0f} MiB")
        except Exception as err:  # noqa: BLE001 - recorded for this batch size; the others still run
            value = {"error": error_text(err)}
            say(f"{job['key']} batch {batch}: {value['error']}")
        result["memory_mb"][str(batch)] = value
        save(result)
    return result


def measure(job: dict, save) -> dict:
    """Build every variant, time them interleaved at each batch size, then latency, FLOPs and accuracy.
    `job["batch_sizes_by_key"]` leaves out the batch sizes a variant's probe could not run."""
    device, entry = job["device"], job["model"]
    allocator = steady_allocator()  # timing only: peak memory (probe) is measured with the default allocator
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
    count_cost(job, base, modules, results)
    save({"variants": results})

    opts, allowed = job["timing"], job["batch_sizes_by_key"]
    with torch.inference_mode():
        for batch in job["batch_sizes"]:
            keys = [k for k in modules if batch in allowed[k]]
            times = time_batch(entry, batch, device, {k: modules[k] for k in keys}, results, opts,
                               repeats=opts["repeats"], min_run_s=opts["min_run_s"])
            for key, t in times.items():
                results[key].setdefault("throughput", {})[str(batch)] = summary(t, batch)
            say(f"batch {batch}: " + ", ".join(f"{k} {summary(t, batch)['img_per_s']:.1f} img/s"
                                               for k, t in times.items()))
            save({"variants": results})
        keys = [k for k in modules if 1 in allowed[k] and "1" not in results[k].get("batch_errors", {})]
        times = time_batch(entry, 1, device, {k: modules[k] for k in keys}, results, opts,
                           repeats=opts["latency_runs"], min_run_s=0.0)
        for key, t in times.items():
            results[key]["latency_ms"] = {"p50": percentile(t, 50) * 1e3, "p95": percentile(t, 95) * 1e3}
        say("latency at batch 1 done")
    save({"variants": results})
    if job.get("data"):
        evaluate(job, base, modules, results)
    return {"variants": results, "allocator": allocator}


def time_batch(entry, batch, device, modules, results, opts, repeats, min_run_s) -> dict[str, list[float]]:
    """Seconds per call of each module at this batch size, interleaved; a module that fails here is
    recorded in its `batch_errors` and left out, and if the interleaved run fails each is timed alone."""
    try:
        x = example_batch(entry, batch, device)
    except Exception as err:  # noqa: BLE001 - e.g. the input alone does not fit
        for key in modules:
            results[key].setdefault("batch_errors", {})[str(batch)] = error_text(err)
        return {}
    runnable = {}
    for key, module in modules.items():
        try:
            module(x)
            runnable[key] = lambda m=module, x=x: m(x)
        except Exception as err:  # noqa: BLE001
            results[key].setdefault("batch_errors", {})[str(batch)] = error_text(err)
    try:
        return time_interleaved(runnable, repeats=repeats, warmup=opts["warmup"], min_run_s=min_run_s, device=device)
    except Exception:  # noqa: BLE001 - find which one fails rather than losing all
        times = {}
        for key, fn in runnable.items():
            try:
                times.update(time_interleaved({key: fn}, repeats=repeats, warmup=opts["warmup"],
                                              min_run_s=min_run_s, device=device))
            except Exception as err:  # noqa: BLE001
                results[key].setdefault("batch_errors", {})[str(batch)] = error_text(err)
        return times


def count_cost(job: dict, base, modules: dict, results: dict) -> None:
    """Parameters and FLOPs; precision and compilation do not change the arithmetic (see flop_variant)."""
    entry, device = job["model"], job["device"]
    shape = (entry["in_chans"], entry["img_size"], entry["img_size"])
    cache = {}
    for key, module in modules.items():
        r = results[key]
        try:
            if key.startswith("peer:"):
                r["params"], r["flops"] = count_params(module), count_flops(module, shape)
                continue
            spec = flop_variant(key)
            if spec not in cache:
                float_model = build_variant(base, spec, example_batch(entry, 2, device), Path(job["workdir"]))
                cache[spec] = count_flops(float_model, shape)
            r["params"], r["flops"] = count_params(base), cache[spec]
        except Exception as err:  # noqa: BLE001 - the count is left out with its reason; the timing still runs
            r["partial_errors"] = r.get("partial_errors", []) + [f"FLOPs not counted: {error_text(err)}"]


def evaluate(job: dict, base, modules: dict, results: dict) -> None:
    from ..data import build_dataset
    from ..data.batches import eval_batches
    from ..data.transforms import saved_model_eval_transform
    from ..evaluation.classification import evaluate_classifier

    try:
        dataset = build_dataset(job["data"], "test")
    except Exception as err:  # noqa: BLE001 - recorded on every variant; the timings stand
        for key in modules:
            results[key]["partial_errors"] = results[key].get("partial_errors", []) + [
                f"accuracy not measured: {error_text(err)}"]
        return
    info = dataset.info
    if job.get("eval_limit") and job["eval_limit"] < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(job["eval_limit"]))  # the first N: the same for all
    transform = saved_model_eval_transform(base.input_spec, getattr(base, "metadata", None) or {}, info.mean, info.std,
                                           getattr(base, "pretrained_cfg", None))
    for key, module in modules.items():
        try:
            with torch.inference_mode():
                report = evaluate_classifier(module, eval_batches(dataset, transform, 256), info.num_classes)
            results[key].update(top1=report.top1, loss=report.loss, eval_samples=report.num_samples)
            say(f"accuracy {key}: {report.top1 * 100:.2f}%")
        except Exception as err:  # noqa: BLE001
            results[key]["partial_errors"] = results[key].get("partial_errors", []) + [
                f"accuracy not measured: {error_text(err)}"]


def main(argv: list[str]) -> int:
    job_path, result_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    torch.set_num_threads(job["threads"])

    last: dict = {}

    def save(result: dict) -> None:
        last.clear()
        last.update(json.loads(json.dumps(result)))
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, result_path)

    try:
        result = probe(job, save) if job["kind"] == "probe" else measure(job, save)
    except Exception as err:  # noqa: BLE001 - the parent records it with what was saved before
        traceback.print_exc()
        result = {**last, "error": error_text(err)}
    result["complete"] = True
    save(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
