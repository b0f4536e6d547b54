"""The training loop: exact resume, DDP, accumulation, bf16, EMA, atomic checkpoints.

Read top to bottom: `train` sets everything up, `_run_epochs` is the loop, the rest are its steps. What is
optimised (views, losses, what is trained around the backbone, how a model is scored) is the run's
objective (`training/objectives/`): supervised DeiT-style training by default. Checkpoints are selected on
the validation split (carved from the training data) by the objective's selection metric; the test split is
evaluated once, at the end, for the selected and for the final model.
"""

import dataclasses
import json
import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

from ..data import build_dataset
from ..data.base import label_subset, parse_classes
from ..data.transforms import AugmentConfig
from ..efficiency.precision import cpu_has_native_bf16
from ..evaluation.classification import save_confusion_png
from ..weights import atomic_write_text, create_model, load, load_checkpoint, save
from .checkpoint import CheckpointManager, load_training_state
from .config import TrainConfig
from .data_stream import batch_indices, epoch_order, iterate_batches, step_generator
from .distributed import DistInfo, all_reduce_mean, barrier, init_distributed, shutdown
from .ema import ModelEma
from .objectives import Objective, Supervised, slice_views, to_device
from .optim import build_optimizer, cosine_weight_decay, warmup_cosine
from .progress import Progress
from .run_dir import RunDirectory

# Options that fix the data stream and the model: a resumed run must keep them.
_RESUME_FIXED = ("model", "data", "val_split", "model_kwargs", "batch_size", "seed", "img_size", "accum_steps",
                 "objective", "objective_args")


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class Run:
    """Everything the loop touches, built once by `train`."""

    cfg: TrainConfig
    dist: DistInfo
    device: torch.device
    out: Path
    model: nn.Module  # what the objective trains (the backbone, or the backbone and its heads); unwrapped
    ddp_model: nn.Module  # what forward/backward go through
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: Objective
    train_set: object
    val_set: object | None  # None with val_split=0: nothing is selected, the final model is the result
    test_set: object
    checkpoints: CheckpointManager
    steps_per_epoch: int
    total_steps: int
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_val: float = -math.inf  # the best validation score (the objective's selection metric)
    last_val: dict | None = None  # the last validation scores, {"model_top1": ...} (rank 0)
    step_terms: dict = dataclasses.field(default_factory=dict)  # the objective's other loss terms, last step
    tensorboard: object = None  # SummaryWriter, when tensorboard is installed (rank 0)


def train(cfg: TrainConfig, resume: str | bool | None = None, overwrite: bool = False) -> dict:
    """Train as `cfg` says; `resume` is True (latest checkpoint in cfg.output) or a checkpoint path.

    An output directory that already holds a run is refused unless `resume` (continue it) or
    `overwrite` (remove the old run's files, then start over); a lock held for the whole run refuses a
    second concurrent run on the same directory.
    """
    device = _pick_device(cfg.device)
    if cfg.amp == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
        cfg = dataclasses.replace(cfg, amp=native)
    dist = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    out = Path(cfg.output)
    run_dir = RunDirectory(out)
    flushing = flushes_denormals()
    try:
        cpu_numerics(cfg, device)
        if dist.is_main:
            _check_writable(out)
            run_dir.acquire(resume=bool(resume), overwrite=overwrite)
        barrier(dist)
        run = _build_run(cfg, dist, device, out)
        if resume:
            _restore(run, load_training_state(out / "checkpoints" if resume is True else resume))
        if dist.is_main:
            atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        return _run_epochs(run)
    finally:
        torch.set_flush_denormal(flushing)  # as it was before
        run_dir.release()
        shutdown(dist)


def flushes_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero now (torch has no getter: a denormal either survives)."""
    return torch.tensor([1e-323], dtype=torch.float64).item() == 0.0


def cpu_numerics(cfg: TrainConfig, device: torch.device) -> None:
    """Flush denormals to zero for CPU training when `cfg.flush_denormal` (no effect on other devices). The flag is
    per thread (the x86 MXCSR register): it reaches the intra-op worker threads torch starts after this call,
    which in `vitkit train` / `vitkit pretrain` / `vitkit zoo` is all of them (none exist before the model is
    built); a process that ran parallel work before calling `train` keeps its earlier workers as they were."""
    if device.type == "cpu":
        torch.set_flush_denormal(cfg.flush_denormal)


def _model_arguments(cfg: TrainConfig, num_classes: int, in_chans: int, objective_kwargs: dict) -> dict:
    """create_model's arguments: the run's options and the data's classes / channels, with `model_kwargs` (over
    the objective's) allowed to give one of them too (e.g. img_size) as long as the two do not disagree."""
    named = {"num_classes": num_classes, "in_chans": in_chans, "img_size": cfg.img_size,
             "drop_path_rate": cfg.drop_path}
    kwargs = {**objective_kwargs, **{k: v for k, v in named.items() if v is not None}}
    for key, value in cfg.model_kwargs.items():
        if named.get(key) is not None and value != named[key]:
            option = {"num_classes": "the dataset's classes", "in_chans": "the dataset's channels"}.get(
                key, key.removesuffix("_rate"))
            raise ValueError(f"model_kwargs {key}={value!r} disagrees with {option} ({named[key]!r}); set it once")
        kwargs[key] = value
    return kwargs


def _build_run(cfg: TrainConfig, dist: DistInfo, device: torch.device, out: Path) -> Run:
    train_set = build_dataset(cfg.data, "train", seed=cfg.seed, val_split=cfg.val_split, classes=cfg.classes)
    if cfg.labels_per_class is not None or cfg.label_fraction is not None:
        if cfg.objective != "supervised":
            raise ValueError(f"labels_per_class / label_fraction choose labels for supervised training; objective "
                             f"{cfg.objective!r} uses no labels (its kNN monitor uses a labelled bank of its own)")
        train_set = train_set.subset(label_subset(train_set.targets, cfg.labels_per_class, cfg.label_fraction,
                                                  cfg.label_seed, f"{cfg.data} (train split)"))
    val_set = None if cfg.val_split == 0 else build_dataset(cfg.data, "val", seed=cfg.seed, val_split=cfg.val_split,
                                                            classes=cfg.classes)
    test_set = build_dataset(cfg.data, "test", seed=cfg.seed, classes=cfg.classes)
    info = train_set.info
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    supervised = cfg.objective == "supervised"
    objective = _build_objective(cfg, info, train_set, device)
    model = create_model(cfg.model, **_model_arguments(cfg, info.num_classes if supervised else 0, info.in_chans,
                                                      objective.model_kwargs()))
    if cfg.init_checkpoint:
        _init_from_checkpoint(model, cfg.init_checkpoint)
    objective.setup(_augment_config(cfg, info, model.input_spec.img_size[0]))
    model = objective.build(model).to(device)
    shard = cfg.batch_size // cfg.accum_steps
    if shard % dist.world_size:
        raise ValueError(f"batch_size / accum_steps = {shard} images is not divisible by {dist.world_size} processes")
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({len(train_set)} images)")
    total_steps = cfg.epochs * steps_per_epoch
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.layer_decay)
    warmup = min(total_steps - 1, round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = warmup_cosine(optimizer, total_steps, max(warmup, 1), cfg.lr, cfg.min_lr)
    ddp_model = (DistributedDataParallel(model, find_unused_parameters=objective.find_unused_parameters)
                 if dist.enabled else model)
    return Run(
        cfg=cfg, dist=dist, device=device, out=out, model=model, ddp_model=ddp_model,
        ema=ModelEma(model, cfg.ema_decay) if cfg.ema_decay else None, optimizer=optimizer, scheduler=scheduler,
        objective=objective, train_set=train_set, val_set=val_set, test_set=test_set,
        checkpoints=CheckpointManager(out / "checkpoints", cfg.keep_last),
        steps_per_epoch=steps_per_epoch, total_steps=min(total_steps, cfg.max_steps or total_steps),
    )


def _init_from_checkpoint(model: nn.Module, path: str) -> None:
    """Fine-tuning: every backbone tensor must come from the checkpoint; only the head (the classifier, which
    depends on the classes) may be missing, unexpected or of another shape."""
    from ..models._groups import layer_ids

    ids = layer_ids(model)
    head = {name for name, i in ids.items() if i == max(ids.values())}
    report = load_checkpoint(model, path, strict=False)
    bad = [k for k in report["missing"] if k not in head]
    bad += [k for k in report["mismatched"] if k.split(" ", 1)[0] not in head]
    if bad:
        raise ValueError(f"init_checkpoint {path}: its backbone does not match {model.model_name} as configured; "
                         f"expected every non-head tensor, but {len(bad)} are missing or of another shape: "
                         f"{', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''} (made with other model options, "
                         "e.g. global_pool or model_kwargs?)")


def _augment_config(cfg: TrainConfig, info, img_size: int) -> AugmentConfig:
    return AugmentConfig(
        img_size=img_size, scale=cfg.scale, ratio=cfg.ratio, translate=cfg.translate, hflip=cfg.hflip,
        auto_augment=cfg.auto_augment, re_prob=cfg.re_prob, mixup=cfg.mixup, cutmix=cfg.cutmix, mix_prob=cfg.mix_prob,
        label_smoothing=cfg.label_smoothing, mean=info.mean, std=info.std, crop_pct=cfg.crop_pct,
    )


def _build_objective(cfg: TrainConfig, info, train_set, device: torch.device) -> Objective:
    """The run's objective, its options checked before any model is built."""
    if cfg.objective == "supervised":
        if cfg.objective_args:
            raise ValueError(f"objective_args {sorted(cfg.objective_args)} given, but the supervised objective "
                             "takes its options as top-level training options")
        return Supervised(info.num_classes, info.class_names, _load_teacher(cfg, info, device), cfg.distill,
                          cfg.distill_alpha, cfg.distill_tau, amp=cfg.amp, workers=cfg.workers)
    if cfg.layer_decay is not None:
        raise ValueError(f"layer_decay is a fine-tuning option (vitkit train); objective {cfg.objective!r} "
                         "pretrains from scratch with one learning rate")
    if cfg.objective == "mae":
        from .objectives.mae import MAE, mae_config

        return MAE(mae_config(cfg.objective_args), train_set, info.num_classes, cfg.seed)
    from .objectives.dino import DINO, dino_config

    return DINO(dino_config(cfg.objective_args), train_set, info.num_classes, cfg.batch_size, cfg.seed)


def _run_epochs(run: Run) -> dict:
    cfg, start = run.cfg, time.perf_counter()
    evaluated, longest_epoch_s, out_of_time = False, 0.0, False
    while run.epoch < cfg.epochs and run.global_step < run.total_steps and not out_of_time:
        epoch_start, losses, terms = time.perf_counter(), [], {}
        order = epoch_order(len(run.train_set), cfg.seed, run.epoch)
        batches = batch_indices(order, cfg.batch_size, run.step_in_epoch)
        progress = Progress(len(batches), f"epoch {run.epoch + 1}/{cfg.epochs}", cfg.progress and run.dist.is_main)
        for images, targets in iterate_batches(run.train_set, batches, cfg.workers):
            losses.append(_train_step(run, images, targets))
            for name, value in run.step_terms.items():
                terms.setdefault(name, []).append(value)
            progress.update(len(images), loss=losses[-1], lr=run.optimizer.param_groups[0]["lr"])
            if cfg.ckpt_every and run.global_step % cfg.ckpt_every == 0:
                _save_checkpoint(run)
            if run.global_step >= run.total_steps:
                break
        progress.close()
        finished_epoch = run.step_in_epoch >= run.steps_per_epoch
        if finished_epoch:
            run.epoch, run.step_in_epoch = run.epoch + 1, 0
        done = run.epoch >= cfg.epochs or run.global_step >= run.total_steps
        row = {"epoch": run.epoch, "step": run.global_step, "train_loss": sum(losses) / max(len(losses), 1),
               "lr": run.optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - epoch_start,
               "img_per_s": len(losses) * cfg.batch_size / (time.perf_counter() - epoch_start),
               **{f"train_{name}": sum(v) / len(v) for name, v in terms.items()}}
        evaluated = run.epoch % cfg.eval_every == 0 or done
        if evaluated:
            _validate_and_keep_best(run, row)
        # the next epoch is estimated as the longest so far, validation included (a partial first epoch after a
        # resume scaled to a whole one); the one that stops is validated, so that selection sees it
        epoch_s = (time.perf_counter() - epoch_start) * run.steps_per_epoch / max(len(losses), 1)
        longest_epoch_s = max(longest_epoch_s, epoch_s)
        out_of_time = not done and _out_of_time(cfg, run, time.perf_counter() - start, longest_epoch_s)
        if out_of_time:
            row["stopped"] = f"time_limit_min {cfg.time_limit_min:g}: another epoch would not fit"
            if not evaluated:
                _validate_and_keep_best(run, row)
                evaluated = True
        _save_checkpoint(run)
        if run.dist.is_main:
            _log(run, row)
    barrier(run.dist)
    if not evaluated:  # resumed at the very end: nothing trained in this process
        _validate_and_keep_best(run, {})
    return _finish(run, time.perf_counter() - start, stopped_by_time_limit=out_of_time)


def _out_of_time(cfg: TrainConfig, run: Run, elapsed_s: float, next_epoch_s: float) -> bool:
    """Would one more epoch of `next_epoch_s` end past `time_limit_min`? Decided on the main process and
    shared, so that every DDP rank stops after the same epoch."""
    if cfg.time_limit_min is None:
        return False
    stop = elapsed_s + next_epoch_s > cfg.time_limit_min * 60
    if run.dist.enabled:
        stop = all_reduce_mean(float(stop) if run.dist.is_main else 0.0, run.dist) > 0
    return stop


def _attention_kernel(cfg: TrainConfig):
    if cfg.sdpa_backend is None:
        return nullcontext()
    return sdpa_kernel(getattr(SDPBackend, cfg.sdpa_backend.upper()))


def _train_step(run: Run, images: torch.Tensor, targets: torch.Tensor) -> float:
    cfg, dist = run.cfg, run.dist
    run.ddp_model.train()
    run.objective.start_step(run.global_step, run.total_steps, run.steps_per_epoch)
    views = run.objective.views(images, targets, step_generator(cfg.seed, run.global_step))
    # dropout / stochastic depth draw from the global RNG: make it a function of the step too
    torch.manual_seed(cfg.seed * 1_000_003 + run.global_step * dist.world_size + dist.rank)
    micro, shard = cfg.batch_size // cfg.accum_steps, cfg.batch_size // cfg.accum_steps // dist.world_size
    total, terms = 0.0, {}
    for a in range(cfg.accum_steps):
        lo = a * micro + dist.rank * shard
        part = to_device(slice_views(views, lo, lo + shard), run.device)
        sync = a == cfg.accum_steps - 1 or not dist.enabled
        with (nullcontext() if sync else run.ddp_model.no_sync()):
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=cfg.amp), _attention_kernel(cfg):
                losses = run.objective.loss(run.ddp_model, part)
                loss = losses["loss"] / cfg.accum_steps
            loss.backward()
        total += loss.item()
        for name, value in losses.items():  # the objective's other terms, logged as epoch means
            if name != "loss":
                terms[name] = terms.get(name, 0.0) + float(value) / cfg.accum_steps
    loss_value = all_reduce_mean(total, dist)
    run.step_terms = {name: all_reduce_mean(value, dist) for name, value in terms.items()}
    if not math.isfinite(loss_value):
        latest = run.checkpoints.latest()
        raise TrainingDiverged(
            f"training loss is {loss_value} at epoch {run.epoch + 1}, step {run.global_step}; stopped before the "
            f"update. Last good checkpoint: {latest or 'none written yet'}. Try a lower lr or clip_grad."
        )
    run.objective.before_update(run.model)
    if cfg.weight_decay_end is not None:
        schedule_steps = cfg.epochs * run.steps_per_epoch  # as the lr schedule's (max_steps only stops early)
        cosine_weight_decay(run.optimizer, run.global_step, schedule_steps, cfg.weight_decay, cfg.weight_decay_end)
    if cfg.clip_grad:
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model)
    run.objective.after_step(run.model, run.global_step + 1, run.total_steps)
    run.global_step += 1
    run.step_in_epoch += 1
    return loss_value


def _validate_and_keep_best(run: Run, row: dict) -> None:
    """Evaluate the backbone (and its EMA) on the validation split on rank 0 (others wait), log into
    `row`, and save `best/` when the objective's selection metric improves. Without a validation split,
    nothing. A collapsed representation is logged as such and never selected."""
    if run.dist.is_main and run.val_set is not None:
        objective, metric = run.objective, run.objective.selection_metric
        candidates = {"model": objective.backbone(run.model)}
        if run.ema:
            candidates["ema"] = objective.backbone(run.ema.module)
        scores = {}
        for name, module in candidates.items():
            metrics = objective.evaluate(module, run.val_set, "val")
            row.update({f"val_{name}_{k}": v for k, v in metrics.items() if isinstance(v, int | float)})
            collapsed = objective.collapsed(metrics)
            if collapsed:
                row[f"val_{name}_collapsed"] = collapsed
                print(f"vitkit: {name} features collapsed at epoch {run.epoch}: {collapsed}", flush=True)
            else:
                scores[name] = metrics[metric]
        objective.visualize(run.model, run.val_set, run.out, run.epoch)
        run.last_val = {f"{name}_{metric}": score for name, score in scores.items()}
        best_name = max(scores, key=scores.get, default=None)
        if best_name is not None and scores[best_name] >= run.best_val:  # a tie: the later model
            run.best_val = scores[best_name]
            save(candidates[best_name], run.out / "best", metadata=_model_metadata(run, best_name, scores[best_name]))
    barrier(run.dist)


def _model_metadata(run: Run, which: str, val_score: float | None) -> dict:
    info = run.train_set.info
    return {
        "dataset": run.cfg.data, "val_split": run.cfg.val_split, "class_names": list(info.class_names),
        "classes": list(parse_classes(run.cfg.classes)) if run.cfg.classes is not None else None,
        "mean": list(info.mean), "std": list(info.std), "crop_pct": run.cfg.crop_pct, "weights": which,
        "epoch": run.epoch, "step": run.global_step, "objective": run.objective.name,
        f"val_{run.objective.selection_metric}": val_score,
    }


def _save_checkpoint(run: Run) -> None:
    if not run.dist.is_main:
        return
    state = {
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "ema": run.ema.state_dict() if run.ema else None,
        "epoch": run.epoch, "step_in_epoch": run.step_in_epoch, "global_step": run.global_step,
        "best_val": run.best_val, "last_val": run.last_val,
        "config": run.cfg.to_dict(), "torch_rng": torch.get_rng_state(),
    }
    run.checkpoints.save(state, run.global_step)


def _restore(run: Run, state: dict) -> None:
    saved = state.get("config", {})
    changed = [f"{k}: {saved.get(k)!r} -> {getattr(run.cfg, k)!r}" for k in _RESUME_FIXED
               if k in saved and _norm(saved[k]) != _norm(getattr(run.cfg, k))]
    if changed:
        raise ValueError("cannot resume: these options differ from the checkpoint's: " + "; ".join(changed))
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.ema is not None and state.get("ema") is not None:
        run.ema.load_state_dict(state["ema"])
    run.epoch, run.step_in_epoch = state["epoch"], state["step_in_epoch"]
    run.global_step = state["global_step"]
    # a checkpoint written before validation splits existed selected on test: its best is not kept
    run.best_val = state.get("best_val", state.get("best_val_top1", -math.inf))
    run.last_val = state.get("last_val")
    torch.set_rng_state(state["torch_rng"])


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def _finish(run: Run, elapsed: float, stopped_by_time_limit: bool = False) -> dict:
    """Save the final model, then evaluate the test split once: the selected model (best/, chosen on
    validation) and the final one. Without a validation split the final model is the result."""
    summary = {"output": str(run.out), "elapsed_s": elapsed, "global_step": run.global_step, "epochs_done": run.epoch,
               "stopped_by_time_limit": stopped_by_time_limit, "amp": run.cfg.amp,
               "selection_metric": run.objective.selection_metric,
               f"best_val_{run.objective.selection_metric}": run.best_val if run.val_set is not None else None}
    if run.dist.is_main:
        objective, metric = run.objective, run.objective.selection_metric
        final_meta = _model_metadata(run, "model", (run.last_val or {}).get(f"model_{metric}"))
        save(objective.backbone(run.model), run.out / "final", metadata=final_meta)
        if run.ema is not None:
            save(objective.backbone(run.ema.module), run.out / "final_ema",
                 metadata=_model_metadata(run, "ema", (run.last_val or {}).get(f"ema_{metric}")))

        def test(model):  # in float32 whatever `amp` trained with: the number `vitkit eval` reproduces
            return objective.evaluate(model.to(run.device), run.test_set, "test")["report"]

        final_report = test(objective.backbone(run.model))
        selected_on = "val" if run.val_set is not None and (run.out / "best").is_dir() else None
        if selected_on:
            best = load(run.out / "best")  # from disk: right after a resume too
            selected_dir, selected_meta, selected_report = "best", best.metadata, test(best)
        else:  # no validation split, or every evaluation collapsed: nothing was selected
            selected_dir, selected_meta, selected_report = "final", final_meta, final_report
        results = {
            "data": run.cfg.data, "split": "test", "selected_on": selected_on,
            "selected": {"dir": selected_dir, **_brief(selected_meta), **selected_report.to_dict()},
            "final": {"dir": "final", **_brief(final_meta), **final_report.to_dict()},
        }
        if run.val_set is not None and not selected_on:
            results["note"] = ("no validation evaluation qualified to be selected (the features collapsed at every "
                               "one; see metrics.jsonl): the final model is reported, and it is not a result")
        if objective.saves_confusion:
            save_confusion_png(selected_report, run.out / "confusion.png")
        atomic_write_text(run.out / "eval.json", json.dumps(results, indent=2) + "\n")
        _log(run, {"epoch": run.epoch, "step": run.global_step, "test_selected_top1": selected_report.top1,
                   "test_selected_top5": selected_report.top5, "test_final_top1": final_report.top1,
                   "test_final_top5": final_report.top5, "selected": selected_dir,
                   "selected_epoch": selected_meta.get("epoch")})
        summary.update(report=selected_report, final_report=final_report, selected=selected_dir,
                       selected_epoch=selected_meta.get("epoch"))
    return summary


def _brief(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k in ("weights", "epoch", "step", "objective") or k.startswith("val_")
            and k != "val_split"}


def _log(run: Run, row: dict) -> None:
    path = run.out / "metrics.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    if run.tensorboard is None:
        run.tensorboard = _open_tensorboard(run.out)
    writer = run.tensorboard
    if writer:
        for key, value in row.items():
            if isinstance(value, int | float) and key != "epoch":
                writer.add_scalar(key, value, row["epoch"])
        writer.flush()


def _open_tensorboard(out: Path):
    """A SummaryWriter, or False when tensorboard is not installed (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    return SummaryWriter(str(out / "tensorboard"))


def _load_teacher(cfg: TrainConfig, info, device: torch.device):
    if cfg.distill == "none":
        return None
    teacher = load(cfg.teacher).to(device).eval().requires_grad_(False)
    in_chans = teacher.input_spec.in_chans
    if in_chans != info.in_chans or teacher.num_classes != info.num_classes:
        raise ValueError(f"teacher {cfg.teacher} takes {in_chans} channels and predicts "
                         f"{teacher.num_classes} classes; the data has {info.in_chans} and {info.num_classes}")
    return teacher


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device {name!r} is not a device torch knows (expected auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device {name!r} requested but {build} (torch {torch.__version__}); use --device cpu")
    return device


def _check_writable(out: Path) -> None:
    """Fail before any training if results could not be saved."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"output directory {out} is not writable ({err.strerror}); choose another with --output"
        ) from err
    if not os.access(out, os.W_OK):
        raise PermissionError(f"output directory {out} is not writable; choose another with --output")
