"""The training loop: DeiT recipe, exact resume, DDP, atomic checkpoints.

Read top to bottom: `train` sets everything up, `_run_epochs` is the loop, the rest are its steps.
Checkpoints are selected on the validation split (carved from the training data); the test split is
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
from ..data.transforms import AugmentConfig, EvalTransform, TrainAugment
from ..efficiency.precision import cpu_has_native_bf16
from ..evaluation.classification import evaluate_classifier, save_confusion_png
from ..models import create_model
from ..weights import atomic_write_text, load, load_checkpoint, save
from .checkpoint import CheckpointManager, load_training_state
from .config import TrainConfig
from .data_stream import batch_indices, epoch_order, eval_batches, iterate_batches, step_generator
from .distributed import DistInfo, all_reduce_mean, barrier, init_distributed, shutdown
from .ema import ModelEma
from .losses import DistillationLoss
from .optim import build_optimizer, warmup_cosine
from .progress import Progress
from .run_dir import RunDirectory

# Options that fix the data stream and the model: a resumed run must keep them.
_RESUME_FIXED = ("model", "data", "val_split", "model_kwargs", "batch_size", "seed", "img_size", "accum_steps")


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class Run:
    """Everything the loop touches, built once by `train`."""

    cfg: TrainConfig
    dist: DistInfo
    device: torch.device
    out: Path
    model: nn.Module  # unwrapped
    ddp_model: nn.Module  # what forward/backward go through
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: DistillationLoss
    train_set: object
    val_set: object | None  # None with val_split=0: nothing is selected, the final model is the result
    test_set: object
    train_aug: TrainAugment
    eval_tf: EvalTransform
    checkpoints: CheckpointManager
    steps_per_epoch: int
    total_steps: int
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_val_top1: float = -1.0
    last_val: dict | None = None  # the last validation results, {"model_top1": ...} (rank 0)
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
    try:
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
        run_dir.release()
        shutdown(dist)


def _build_run(cfg: TrainConfig, dist: DistInfo, device: torch.device, out: Path) -> Run:
    train_set = build_dataset(cfg.data, "train", seed=cfg.seed, val_split=cfg.val_split)
    val_set = None if cfg.val_split == 0 else build_dataset(cfg.data, "val", seed=cfg.seed, val_split=cfg.val_split)
    test_set = build_dataset(cfg.data, "test", seed=cfg.seed)
    info = train_set.info
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    model = create_model(cfg.model, num_classes=info.num_classes, in_chans=info.in_chans, img_size=cfg.img_size,
                         drop_path_rate=cfg.drop_path, **cfg.model_kwargs)
    if cfg.init_checkpoint:
        load_checkpoint(model, cfg.init_checkpoint, strict=False)
    model.to(device)
    aug = AugmentConfig(
        img_size=model.input_spec.img_size[0], scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
        auto_augment=cfg.auto_augment, re_prob=cfg.re_prob, mixup=cfg.mixup, cutmix=cfg.cutmix,
        mix_prob=cfg.mix_prob, label_smoothing=cfg.label_smoothing, mean=info.mean, std=info.std,
        crop_pct=cfg.crop_pct,
    )
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
    teacher = _load_teacher(cfg, info, device)
    if cfg.distill == "hard" and getattr(model, "head_dist", None) is not None:
        model.set_distilled_training(True)
    ddp_model = DistributedDataParallel(model) if dist.enabled else model
    return Run(
        cfg=cfg, dist=dist, device=device, out=out, model=model, ddp_model=ddp_model,
        ema=ModelEma(model, cfg.ema_decay) if cfg.ema_decay else None, optimizer=optimizer, scheduler=scheduler,
        criterion=DistillationLoss(teacher, cfg.distill, cfg.distill_alpha, cfg.distill_tau),
        train_set=train_set, val_set=val_set, test_set=test_set, train_aug=TrainAugment(aug, info.num_classes),
        eval_tf=EvalTransform(aug), checkpoints=CheckpointManager(out / "checkpoints", cfg.keep_last),
        steps_per_epoch=steps_per_epoch, total_steps=min(total_steps, cfg.max_steps or total_steps),
    )


def _run_epochs(run: Run) -> dict:
    cfg, start = run.cfg, time.perf_counter()
    evaluated = False
    while run.epoch < cfg.epochs and run.global_step < run.total_steps:
        epoch_start, losses = time.perf_counter(), []
        order = epoch_order(len(run.train_set), cfg.seed, run.epoch)
        batches = batch_indices(order, cfg.batch_size, run.step_in_epoch)
        progress = Progress(len(batches), f"epoch {run.epoch + 1}/{cfg.epochs}", cfg.progress and run.dist.is_main)
        for images, targets in iterate_batches(run.train_set, batches, cfg.workers):
            losses.append(_train_step(run, images, targets))
            progress.update(len(images), loss=losses[-1], lr=run.optimizer.param_groups[0]["lr"])
            if cfg.ckpt_every and run.global_step % cfg.ckpt_every == 0:
                _save_checkpoint(run)
            if run.global_step >= run.total_steps:
                break
        progress.close()
        finished_epoch = run.step_in_epoch >= run.steps_per_epoch
        if finished_epoch:
            run.epoch, run.step_in_epoch = run.epoch + 1, 0
        last = run.epoch >= cfg.epochs or run.global_step >= run.total_steps
        row = {"epoch": run.epoch, "step": run.global_step, "train_loss": sum(losses) / max(len(losses), 1),
               "lr": run.optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - epoch_start,
               "img_per_s": len(losses) * cfg.batch_size / (time.perf_counter() - epoch_start)}
        evaluated = run.epoch % cfg.eval_every == 0 or last
        if evaluated:
            _validate_and_keep_best(run, row)
        _save_checkpoint(run)
        if run.dist.is_main:
            _log(run, row)
    barrier(run.dist)
    if not evaluated:  # resumed at the very end: nothing trained in this process
        _validate_and_keep_best(run, {})
    return _finish(run, time.perf_counter() - start)


def _attention_kernel(cfg: TrainConfig):
    if cfg.sdpa_backend is None:
        return nullcontext()
    return sdpa_kernel(getattr(SDPBackend, cfg.sdpa_backend.upper()))


def _train_step(run: Run, images: torch.Tensor, targets: torch.Tensor) -> float:
    cfg, dist = run.cfg, run.dist
    run.ddp_model.train()
    x, y = run.train_aug(images, targets, step_generator(cfg.seed, run.global_step))
    # dropout / stochastic depth draw from the global RNG: make it a function of the step too
    torch.manual_seed(cfg.seed * 1_000_003 + run.global_step * dist.world_size + dist.rank)
    micro, shard = cfg.batch_size // cfg.accum_steps, cfg.batch_size // cfg.accum_steps // dist.world_size
    total = 0.0
    for a in range(cfg.accum_steps):
        lo = a * micro + dist.rank * shard
        xs, ys = x[lo:lo + shard].to(run.device), y[lo:lo + shard].to(run.device)
        sync = a == cfg.accum_steps - 1 or not dist.enabled
        with (nullcontext() if sync else run.ddp_model.no_sync()):
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=cfg.amp), _attention_kernel(cfg):
                loss = run.criterion(xs, run.ddp_model(xs), ys) / cfg.accum_steps
            loss.backward()
        total += loss.item()
    loss_value = all_reduce_mean(total, dist)
    if not math.isfinite(loss_value):
        latest = run.checkpoints.latest()
        raise TrainingDiverged(
            f"training loss is {loss_value} at epoch {run.epoch + 1}, step {run.global_step}; stopped before the "
            f"update. Last good checkpoint: {latest or 'none written yet'}. Try a lower lr or clip_grad."
        )
    if cfg.clip_grad:
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model)
    run.global_step += 1
    run.step_in_epoch += 1
    return loss_value


def _validate_and_keep_best(run: Run, row: dict) -> None:
    """Evaluate the model (and its EMA) on the validation split on rank 0 (others wait), log into
    `row`, and save `best/` when validation top-1 improves. Without a validation split, nothing."""
    if run.dist.is_main and run.val_set is not None:
        info = run.val_set.info
        candidates = {"model": run.model} | ({"ema": run.ema.module} if run.ema else {})
        reports = {}
        for name, module in candidates.items():
            batches = eval_batches(run.val_set, run.eval_tf, workers=run.cfg.workers)
            reports[name] = evaluate_classifier(module, batches, info.num_classes, info.class_names, run.cfg.amp)
            row.update({f"val_{name}_top1": reports[name].top1, f"val_{name}_top5": reports[name].top5,
                        f"val_{name}_loss": reports[name].loss})
        run.last_val = {f"{name}_top1": r.top1 for name, r in reports.items()}
        best_name = max(reports, key=lambda n: reports[n].top1)
        if reports[best_name].top1 >= run.best_val_top1:  # a tie goes to the later, further-trained model
            run.best_val_top1 = reports[best_name].top1
            save(candidates[best_name], run.out / "best", metadata=_model_metadata(run, best_name, run.best_val_top1))
    barrier(run.dist)


def _model_metadata(run: Run, which: str, val_top1: float | None) -> dict:
    info = run.train_set.info
    return {
        "dataset": run.cfg.data, "val_split": run.cfg.val_split, "class_names": list(info.class_names),
        "mean": list(info.mean), "std": list(info.std), "crop_pct": run.cfg.crop_pct, "weights": which,
        "epoch": run.epoch, "step": run.global_step, "val_top1": val_top1,
    }


def _save_checkpoint(run: Run) -> None:
    if not run.dist.is_main:
        return
    state = {
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "ema": run.ema.state_dict() if run.ema else None,
        "epoch": run.epoch, "step_in_epoch": run.step_in_epoch, "global_step": run.global_step,
        "best_val_top1": run.best_val_top1, "last_val": run.last_val,
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
    run.best_val_top1 = state.get("best_val_top1", -1.0)
    run.last_val = state.get("last_val")
    torch.set_rng_state(state["torch_rng"])


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def _finish(run: Run, elapsed: float) -> dict:
    """Save the final model, then evaluate the test split once: the selected model (best/, chosen on
    validation) and the final one. Without a validation split the final model is the result."""
    summary = {"output": str(run.out), "elapsed_s": elapsed, "global_step": run.global_step, "amp": run.cfg.amp,
               "best_val_top1": run.best_val_top1 if run.val_set is not None else None}
    if run.dist.is_main:
        last_val = (run.last_val or {}).get("model_top1")
        final_meta = _model_metadata(run, "model", last_val)
        save(run.model, run.out / "final", metadata=final_meta)
        if run.ema is not None:
            save(run.ema.module, run.out / "final_ema",
                 metadata=_model_metadata(run, "ema", (run.last_val or {}).get("ema_top1")))
        info = run.test_set.info

        def test(model):  # in float32 whatever `amp` trained with: the number `vitkit eval` reproduces
            batches = eval_batches(run.test_set, run.eval_tf, workers=run.cfg.workers)
            return evaluate_classifier(model.to(run.device), batches, info.num_classes, info.class_names)

        final_report = test(run.model)
        if run.val_set is not None:
            best = load(run.out / "best")  # from disk: right after a resume too
            selected_dir, selected_meta, selected_report = "best", best.metadata, test(best)
        else:
            selected_dir, selected_meta, selected_report = "final", final_meta, final_report
        results = {
            "data": run.cfg.data, "split": "test", "selected_on": "val" if run.val_set is not None else None,
            "selected": {"dir": selected_dir, **_brief(selected_meta), **selected_report.to_dict()},
            "final": {"dir": "final", **_brief(final_meta), **final_report.to_dict()},
        }
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
    return {k: meta.get(k) for k in ("weights", "epoch", "step", "val_top1")}


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
