"""Running the zoo: estimate each entry's epoch time, fit its epochs to the budget, train it (the trainer
selects `best/` on the validation split), then measure the selected model.

Budget: `budget_min` minutes of training per entry and seed, validation passes included. Before anything is
trained every entry is timed (a few warmed-up optimizer steps on real batches, plus one validation forward
pass scaled to the validation split) and given epochs = floor(PLAN_SHARE x budget / epoch time); an entry of
which not even one epoch fits is refused then, so a too-small budget fails before any run starts. Estimates
from the first steps run short of whole epochs (and a busy machine slows any run), so the plan keeps a margin,
and the trainer stops a run once another epoch would end past the budget (`time_limit_min`). Warm-up is the
recipe's, capped at a tenth of the planned epochs (`fit_warmup`): a 3-epoch entry warms up for 0.3 epochs
rather than spending its first whole epoch there. The final test evaluation and the measurements below come
on top of the budget.

Measurements of the selected model: test top-1 (the trainer's eval.json) and ECE on the test split,
parameters and GFLOPs (a forward at batch 1), training img/s (median over epochs, metrics.jsonl), and, in
`vitkit bench`'s worker processes, inference img/s at batch 1 and 256 (warm-up, interleaved repeats, median)
and peak memory (the peak RSS of a process that loads the model and runs batch 256 forwards: weights, the
runtime and activations).
"""

import dataclasses
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..bench.timing import machine_info
from ..data import build_dataset
from ..data.batches import eval_batches
from ..data.transforms import saved_model_eval_transform
from ..efficiency.precision import cpu_has_native_bf16
from ..evaluation.calibration import ece
from ..reporting import check_output_dir
from ..training import TrainConfig, train
from ..weights import load
from .recipes import check_models, zoo_config
from .report import write_report

ESTIMATE_STEPS = 20  # timed optimizer steps per entry, after ESTIMATE_WARMUP untimed ones
ESTIMATE_WARMUP = 3
INFER_BATCHES = (1, 256)
WARMUP_SHARE = 0.1  # at most this share of an entry's epochs is learning-rate warm-up
PLAN_SHARE = 0.95  # epochs are planned to fill this share of the budget (the 30-minute ViT run overshot by 7%)
TIMING = {"warmup": 2, "repeats": 7, "min_run_s": 0.5, "latency_runs": 20}  # the bench's timing options


@dataclasses.dataclass
class Estimate:
    step_s: float  # seconds per optimizer step (augmentation included)
    steps_per_epoch: int
    val_s: float  # seconds per validation pass
    eval_every: int

    @property
    def epoch_s(self) -> float:
        return self.step_s * self.steps_per_epoch + self.val_s / self.eval_every


def estimate_epoch(cfg: TrainConfig, steps: int = ESTIMATE_STEPS, warmup: int = ESTIMATE_WARMUP) -> Estimate:
    """Time `steps` training steps of `cfg` as the trainer runs them (its own run setup and step), after
    `warmup` untimed ones, and one validation-sized forward pass; nothing is written to `cfg.output`."""
    from ..training.trainer import _pick_device, flushes_denormals

    device = _pick_device(cfg.device)
    flushing = flushes_denormals()
    try:
        return _estimate(cfg, device, steps, warmup)
    finally:
        torch.set_flush_denormal(flushing)


def _estimate(cfg: TrainConfig, device: torch.device, steps: int, warmup: int) -> Estimate:
    from ..training.data_stream import batch_indices, epoch_order, iterate_batches
    from ..training.distributed import DistInfo
    from ..training.trainer import _build_run, _train_step, cpu_numerics

    cpu_numerics(cfg, device)
    if cfg.amp == "auto":  # as `train` resolves it
        cfg = dataclasses.replace(cfg, amp=torch.cuda.is_bf16_supported() if device.type == "cuda"
                                  else cpu_has_native_bf16())
    run = _build_run(cfg, DistInfo(), device, Path(cfg.output))
    order = epoch_order(len(run.train_set), cfg.seed, 0)
    batches = batch_indices(order, cfg.batch_size, 0)[: warmup + steps]
    times, start = [], time.perf_counter()
    for images, targets in iterate_batches(run.train_set, batches, cfg.workers):  # batch loading timed too
        _train_step(run, images, targets)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    timed = times[warmup:] or times
    val_s = 0.0
    if run.val_set is not None:
        model = run.objective.backbone(run.model).eval()
        size = model.input_spec.img_size
        x = torch.randn(min(256, len(run.val_set)), model.input_spec.in_chans, *size, device=device)
        with torch.inference_mode():
            model(x)
            start = time.perf_counter()
            model(x)
            val_s = (time.perf_counter() - start) * len(run.val_set) / len(x)
    return Estimate(sum(timed) / len(timed), run.steps_per_epoch, val_s, cfg.eval_every)


def plan_epochs(name: str, estimate: Estimate, budget_min: float) -> int:
    """Whole epochs that fit in the budget; a budget below one epoch is refused, naming what would do."""
    epochs = math.floor(PLAN_SHARE * budget_min * 60 / estimate.epoch_s)
    if epochs < 1:
        need = math.ceil(estimate.epoch_s / PLAN_SHARE / 60 * 10) / 10
        raise ValueError(f"--budget-min {budget_min:g} is too small for {name}: one epoch takes "
                         f"~{estimate.epoch_s / 60:.2g} min here ({estimate.steps_per_epoch} steps at "
                         f"~{estimate.step_s:.2g} s each, plus validation); expected at least {need:g} minutes")
    return epochs


def fit_warmup(warmup_epochs: float, epochs: int) -> float:
    """The recipe's warm-up, capped at WARMUP_SHARE of the planned epochs, so that an entry that fits only a
    few epochs in the budget still spends most of them past the warm-up (at full, then decaying, lr)."""
    return min(warmup_epochs, WARMUP_SHARE * epochs)


def _bench_worker(job: dict, workdir: Path) -> dict:
    """Run one `vitkit bench` worker job (its own process) and return its result."""
    job_path, result_path = workdir / f"{job['kind']}-job.json", workdir / f"{job['kind']}-result.json"
    job_path.write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-P", "-m", "vitkit.bench.worker", str(job_path), str(result_path)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    if proc.returncode or "error" in result:
        raise RuntimeError(f"bench worker ({job['kind']}) failed: {result.get('error') or proc.stderr[-500:]}")
    return result


def measure_model(model_dir: Path, threads: int, timing: dict, workdir: Path) -> dict:
    """Parameters, GFLOPs, inference img/s at batch 1 and 256 and peak memory, in bench worker processes."""
    model = load(model_dir)
    spec = model.input_spec
    entry = {"is_checkpoint": True, "source": str(model_dir), "in_chans": spec.in_chans, "img_size": spec.img_size[0]}
    common = {"device": "cpu", "model": entry, "threads": threads, "workdir": str(workdir)}
    measured = _bench_worker({**common, "kind": "measure", "keys": ["none"], "batch_sizes": list(INFER_BATCHES),
                              "batch_sizes_by_key": {"none": list(INFER_BATCHES)}, "timing": timing},
                             workdir)["variants"]["none"]
    if measured.get("batch_errors"):
        raise RuntimeError(f"inference timing failed for {model_dir}: {measured['batch_errors']}")
    memory = _bench_worker({**common, "kind": "probe", "key": "none", "batch_sizes": [INFER_BATCHES[-1]]},
                           workdir)["memory_mb"][str(INFER_BATCHES[-1])]
    return {
        "params": measured["params"], "gflops": measured["flops"] / 1e9, "img_size": spec.img_size[0],
        **{f"infer_img_s_b{b}": measured["throughput"][str(b)]["img_per_s"] for b in INFER_BATCHES},
        "peak_mem_mb": memory if isinstance(memory, int | float) else None,
    }


def ece_on_test(model_dir: Path, data: str, seed: int) -> float:
    """Expected calibration error of the saved model's logits on the test split."""
    model = load(model_dir).eval()
    dataset = build_dataset(data, "test", seed=seed)
    info = dataset.info
    transform = saved_model_eval_transform(model.input_spec, getattr(model, "metadata", None) or {}, info.mean,
                                           info.std)
    logits, labels = [], []
    with torch.inference_mode():
        for images, targets in eval_batches(dataset, transform, 256):
            logits.append(model(images).float())
            labels.append(targets)
    return ece(torch.cat(logits), torch.cat(labels))


def selected_val_top1(run_dir: Path) -> float | None:
    """Validation top-1 of the model the run selected (its eval.json): what to choose a family by, not test."""
    path = run_dir / "eval.json"
    return json.loads(path.read_text())["selected"].get("val_top1") if path.is_file() else None


def _mean_val_top1(runs: list[dict]) -> float | None:
    """Mean validation top-1 over a row's seeds, read from each run's eval.json where the run record lacks it
    (reports made before it was a column); None when a run has none."""
    values = [r.get("val_top1") if r.get("val_top1") is not None else selected_val_top1(Path(r["dir"]))
              for r in runs]
    return statistics.mean(values) if values and None not in values else None


def _selected_dir(run: dict) -> Path:
    return Path(run["dir"]) / run["selected"]


def train_images_per_s(run_dir: Path) -> float | None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["img_per_s"] for r in rows if r.get("img_per_s")]
    return statistics.median(speeds) if speeds else None


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def run_zoo(models: list[str] | None = None, data: str = "fashion-mnist", budget_min: float = 10.0,
            out: str | Path = "runs/zoo", seeds: tuple[int, ...] = (0,), threads: int | None = None,
            overrides: dict[str, Any] | None = None, estimate_steps: int = ESTIMATE_STEPS,
            timing: dict | None = None, progress: bool = True, command: str | None = None) -> dict:
    """Train and measure each zoo entry (all when `models` is None) under the same budget; writes
    results.json, results.csv, pareto.png and report.html to `out`, the training runs to `out/runs/`.
    `overrides` (training options for every entry) and `estimate_steps`/`timing` exist to make tests small."""
    names = check_models(models)
    if budget_min <= 0:
        raise ValueError(f"--budget-min must be a positive number of minutes, got {budget_min:g}")
    if not seeds:
        raise ValueError("expected at least one seed")
    out = check_output_dir(Path(out), "vitkit zoo", markers=("results.json", "runs"))
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    overrides = {"progress": progress, **(overrides or {})}

    def say(text: str) -> None:
        if progress:
            print(f"vitkit zoo: {text}", file=sys.stderr, flush=True)

    plans = {}
    with tempfile.TemporaryDirectory(prefix="vitkit-zoo-estimate-") as tmp:
        for name in names:
            estimate = estimate_epoch(zoo_config(name, data, Path(tmp) / name, seeds[0], overrides), estimate_steps)
            plans[name] = (estimate, plan_epochs(name, estimate, budget_min))
            say(f"{name}: ~{estimate.epoch_s:.0f} s per epoch, {plans[name][1]} epochs in {budget_min:g} min")

    rows = []
    for name in names:
        estimate, epochs = plans[name]
        runs = []
        for seed in seeds:
            cfg = zoo_config(name, data, out / "runs" / f"{name}-s{seed}", seed, overrides)
            cfg = dataclasses.replace(cfg, epochs=epochs, warmup_epochs=fit_warmup(cfg.warmup_epochs, epochs),
                                      time_limit_min=budget_min)
            say(f"training {name} seed {seed}: {epochs} epochs")
            summary = train(cfg, overwrite=True)
            run_dir = Path(summary["output"])
            selected = run_dir / summary["selected"]
            runs.append({"seed": seed, "dir": str(run_dir), "top1": summary["report"].top1,
                         "val_top1": selected_val_top1(run_dir),
                         "ece": ece_on_test(selected, data, seed), "train_min": summary["elapsed_s"] / 60,
                         "train_img_s": train_images_per_s(run_dir), "selected": summary["selected"],
                         "selected_epoch": summary["selected_epoch"], "epochs_done": summary["epochs_done"],
                         "stopped_by_time_limit": summary["stopped_by_time_limit"]})
        say(f"measuring {name}")
        with tempfile.TemporaryDirectory(prefix="vitkit-zoo-bench-") as tmp:
            first = _selected_dir(runs[0])
            cost = measure_model(first, threads, timing or TIMING, Path(tmp))
        top1, top1_std = _mean_std([r["top1"] for r in runs])
        rows.append({
            "model": name, "architecture": load(first).architecture, "top1": top1, "top1_std": top1_std,
            "val_top1": _mean_val_top1(runs),
            "ece": statistics.mean(r["ece"] for r in runs), **cost,
            "train_img_s": statistics.mean(r["train_img_s"] or 0.0 for r in runs),
            "epochs": epochs, "epochs_done": min(r["epochs_done"] for r in runs),
            "stopped_by_time_limit": any(r["stopped_by_time_limit"] for r in runs), "est_epoch_s": estimate.epoch_s,
            "train_min": statistics.mean(r["train_min"] for r in runs), "seeds": len(runs), "runs": runs,
        })
    results = {"data": data, "budget_min": budget_min, "seeds": list(seeds), "machine": machine_info(threads=threads),
               "command": command, "rows": rows}
    write_report(results, out)
    return results


def merge_zoo(dirs: list[str | Path], out: str | Path, threads: int | None = None, remeasure: bool = True,
              timing: dict | None = None, progress: bool = True, command: str | None = None) -> dict:
    """One report from several zoo runs of the same data, budget and seeds (e.g. entries run side by side, one
    thread each): their rows together, and with `remeasure` every selected model's inference speed and memory
    measured again here, one after the other on this machine (so that runs that shared the CPU are timed alike).
    The training runs stay where they are (the rows point to them)."""
    parts = []
    for d in dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise ValueError(f"{d} is not a zoo report directory: expected {path}")
        parts.append(json.loads(path.read_text()))
    if not parts:
        raise ValueError("expected at least one zoo report directory to merge")
    for key in ("data", "budget_min", "seeds"):
        if any(p[key] != parts[0][key] for p in parts):
            values = sorted({json.dumps(p[key]) for p in parts})
            raise ValueError(f"the zoo runs differ in {key} ({', '.join(values)}): only runs of the same data, "
                             "budget and seeds make one table")
    rows = [r for p in parts for r in p["rows"]]
    for row in rows:
        if row.get("val_top1") is None:
            row["val_top1"] = _mean_val_top1(row["runs"])
        row.setdefault("epochs_done", row["epochs"])  # reports from before the time limit ran every planned epoch
    names = [r["model"] for r in rows]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"an entry appears in more than one of the zoo runs: {', '.join(repeated)}")
    out = check_output_dir(Path(out), "vitkit zoo", markers=("results.json", "runs"))
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    if remeasure:
        for row in rows:
            if progress:
                print(f"vitkit zoo: timing {row['model']} again", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix="vitkit-zoo-bench-") as tmp:
                row.update(measure_model(_selected_dir(row["runs"][0]), threads, timing or TIMING, Path(tmp)))
    results = {"data": parts[0]["data"], "budget_min": parts[0]["budget_min"], "seeds": parts[0]["seeds"],
               "machine": machine_info(threads=threads), "command": command, "rows": rows,
               "merged_from": [{"dir": str(d), "command": p.get("command"), "machine": p["machine"]}
                               for d, p in zip(dirs, parts, strict=True)],
               "remeasured": remeasure}
    write_report(results, out)
    return results
