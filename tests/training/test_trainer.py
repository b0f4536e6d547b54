import json
import sys
from pathlib import Path

import pytest
import torch
from run_checks import assert_killed_run_resumes, assert_two_processes_match_one
from safetensors.torch import load_file

import vitkit
from vitkit.training import TrainConfig, TrainingDiverged, train
from vitkit.training.optim import build_optimizer, warmup_cosine

TINY_MODEL = {"embed_dim": 32, "depth": 2, "num_heads": 2}
FAST = dict(model="vit_pico_patch4_32", data="synthetic:128", model_kwargs=TINY_MODEL, batch_size=32,
            epochs=2, lr=2e-3, warmup_epochs=1, drop_path=0.0, progress=False)


def config(tmp_path, **overrides) -> TrainConfig:
    return TrainConfig.from_dict({**FAST, "output": str(tmp_path / "run"), **overrides})


def test_train_writes_models_metrics_and_learns(tmp_path):
    summary = train(config(tmp_path, epochs=6, data="synthetic:256", auto_augment="rand-m9-n2", ema_decay=0.9))
    out = Path(summary["output"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs, test_rows = rows[:-1], rows[-1:]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5, 6]
    assert {"train_loss", "val_model_top1", "val_ema_top1", "lr", "img_per_s"} <= set(epochs[0])
    assert not any(key.startswith("test") for r in epochs for key in r)  # no test numbers during training
    assert {"test_selected_top1", "test_final_top1"} <= set(test_rows[0])
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert summary["best_val_top1"] > 0.3  # 10 classes: chance is 0.1
    assert summary["report"].top1 > 0.3 and summary["final_report"].num_samples == 64
    for directory in ("best", "final", "final_ema"):
        assert (out / directory / "model.safetensors").is_file()
    best = vitkit.load(out / "best")
    assert best.metadata["class_names"][0] == "class_0" or len(best.metadata["class_names"]) == 10
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "checkpoints").glob("step-*.pt"))) == 2  # keep_last


def test_grad_accumulation_matches_full_batch(tmp_path):
    a = train(config(tmp_path / "a", max_steps=3, auto_augment=None, re_prob=0.0))
    b = train(config(tmp_path / "b", max_steps=3, auto_augment=None, re_prob=0.0, accum_steps=4))
    wa = load_file(Path(a["output"]) / "final" / "model.safetensors")
    wb = load_file(Path(b["output"]) / "final" / "model.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=2e-5, rtol=1e-4)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = config(tmp_path, lr=1e12, clip_grad=None, ckpt_every=1, warmup_epochs=0, epochs=3, auto_augment=None)
    with pytest.raises(TrainingDiverged, match=r"training loss is (nan|inf).*Last good checkpoint: .*step-\d+\.pt"):
        train(cfg)
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))
    assert checkpoints
    state = torch.load(checkpoints[-1], weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_unwritable_output_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match=r"output directory .*file/run is not writable"):
        train(config(tmp_path, output=str(blocker / "run")))


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown training option\(s\): epoch \(did you mean epochs"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="batch_size 30 is not divisible by accum_steps 4"):
        TrainConfig(batch_size=30, accum_steps=4)
    with pytest.raises(ValueError, match=r"batch_size 512 is larger than the training set \(115 images\)"):
        train(config(tmp_path, batch_size=512))
    with pytest.raises(ValueError, match="translate must be >= 0, got -2"):
        TrainConfig(translate=-2)
    with pytest.raises(ValueError, match=r"sdpa_backend must be one of math, flash_attention, .* got 'fast'"):
        TrainConfig(sdpa_backend="fast")


def test_time_limit_stops_after_the_epoch_past_which_another_would_not_fit(tmp_path, monkeypatch):
    import itertools
    from types import SimpleNamespace

    import vitkit.training.trainer as trainer
    from vitkit.training.distributed import DistInfo

    clock = itertools.count(0, 10)  # every reading of the trainer's clock is 10 s after the one before
    monkeypatch.setattr(trainer, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    summary = train(config(tmp_path, epochs=50, eval_every=7, time_limit_min=0.01))  # 0.6 s: one epoch at most
    rows = [json.loads(line) for line in (Path(summary["output"]) / "metrics.jsonl").read_text().splitlines()]
    assert summary["epochs_done"] == 1 and [r["epoch"] for r in rows[:-1]] == [1]
    assert "time_limit_min 0.01" in rows[0]["stopped"] and "val_model_top1" in rows[0]  # validated, not epoch 7
    assert (Path(summary["output"]) / "best").is_dir() and summary["report"].num_samples > 0
    stopped = lambda limit_min: trainer._out_of_time(  # noqa: E731
        TrainConfig(time_limit_min=limit_min), SimpleNamespace(dist=DistInfo()), 100.0, 30.0)
    assert stopped(2.0) and not stopped(2.2)  # 100 s done + a 30 s epoch: past 120 s, within 132 s
    with pytest.raises(ValueError, match=r"time_limit_min must be > 0 \(minutes\) or null, got 0"):
        TrainConfig(time_limit_min=0)


def test_attention_kernel_choice_trains_the_same_model(tmp_path, monkeypatch):
    """sdpa_backend picks torch's kernel for the training steps only; the arithmetic is the same."""
    import torch.nn.attention as attention

    chosen = []
    real = attention.sdpa_kernel
    monkeypatch.setattr("vitkit.training.trainer.sdpa_kernel", lambda b: chosen.append(b) or real(b))
    a = train(config(tmp_path / "a", max_steps=3, auto_augment=None, re_prob=0.0))
    b = train(config(tmp_path / "b", max_steps=3, auto_augment=None, re_prob=0.0, sdpa_backend="math"))
    assert chosen and set(chosen) == {attention.SDPBackend.MATH}
    wa = load_file(Path(a["output"]) / "final" / "model.safetensors")
    wb = load_file(Path(b["output"]) / "final" / "model.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-4, rtol=1e-3)


def test_optimizer_groups_and_schedule():
    model = vitkit.create_model("vit_pico_patch4_32", **TINY_MODEL)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[i].endswith(".weight") and "norm" not in names[i] for i in decayed)
    assert id(model.pos_embed) not in decayed and id(model.cls_token) not in decayed
    assert id(model.blocks[0].attn.qkv.weight) in decayed
    layered = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lrs = {names[id(p)]: g["lr"] for g in layered.param_groups for p in g["params"]}
    assert lrs["head.weight"] == pytest.approx(1e-3)
    assert lrs["blocks.1.attn.qkv.weight"] == pytest.approx(5e-4)
    assert lrs["patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.5**3)
    sched = warmup_cosine(opt, total_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    lr_at = []
    for _ in range(100):
        lr_at.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lr_at[0] == pytest.approx(1e-4) and lr_at[9] == pytest.approx(1e-3)
    assert lr_at[-1] == pytest.approx(1e-5, rel=0.05) and lr_at[50] < lr_at[20]


def test_hard_distillation_through_distillation_token(tmp_path):
    teacher = train(config(tmp_path / "teacher", epochs=1))
    student = train(config(tmp_path / "student", model="deit_pico_distilled_patch4_32", distill="hard",
                           teacher=str(Path(teacher["output"]) / "best"), epochs=1))
    assert (Path(student["output"]) / "best" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="distill='soft' needs a teacher"):
        config(tmp_path, distill="soft")


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vitkit", "train", "--model", "vit_pico_patch4_32", "--data", "synthetic:256",
            "--output", str(out), "--epochs", "3", "--batch-size", "32", "--lr", "2e-3", "--drop-path", "0",
            "--set", "model_kwargs={embed_dim: 32, depth: 2, num_heads: 2}", "--set", "warmup_epochs=1",
            "--quiet", *extra]


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    assert_killed_run_resumes(_train_cmd, tmp_path, last_checkpoint="step-00000024.pt")  # 3 epochs x 8 steps


def test_two_processes_match_one(tmp_path):
    assert_two_processes_match_one(_train_cmd, tmp_path, "--set", "auto_augment=null", "--set", "epochs=1")


def test_denormals_are_flushed_while_training_on_cpu_and_restored_after(tmp_path, monkeypatch):
    """AdamW's second moments of tiny gradients reach the denormal range, slow on x86: CPU training flushes them
    (`flush_denormal`, on by default), and leaves the thread as it found it, even when the run fails."""
    from vitkit.training import trainer
    from vitkit.training.trainer import flushes_denormals as _flushes_denormals

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals (no SSE3 DAZ)")

    seen = []
    real_step = trainer._train_step
    monkeypatch.setattr(trainer, "_train_step", lambda *a: (seen.append(_flushes_denormals()), real_step(*a))[1])
    train(config(tmp_path, epochs=1, device="cpu"))
    assert seen and all(seen) and not _flushes_denormals()
    seen.clear()
    train(config(tmp_path, epochs=1, device="cpu", flush_denormal=False), overwrite=True)
    assert seen and not any(seen)
    with pytest.raises(ValueError):
        train(config(tmp_path, epochs=1, device="cpu", data="no-such-dataset"), overwrite=True)
    assert not _flushes_denormals()
    torch.set_flush_denormal(True)  # a caller's own setting survives a run that turns it off
    try:
        train(config(tmp_path, epochs=1, device="cpu", flush_denormal=False), overwrite=True)
        assert _flushes_denormals()
    finally:
        torch.set_flush_denormal(False)


def test_weight_decay_follows_a_cosine_from_start_to_end_on_decaying_groups_only(tmp_path, monkeypatch):
    seen = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append(sorted({(g["decays"], g["weight_decay"]) for g in self.param_groups}))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    train(config(tmp_path, epochs=2, weight_decay=0.04, weight_decay_end=0.4))
    decaying = [dict(groups)[True] for groups in seen]
    assert all(dict(groups)[False] == 0.0 for groups in seen)  # norms, biases, tokens: never decayed
    assert decaying[0] == pytest.approx(0.04) and decaying[-1] == pytest.approx(0.4)
    assert all(a < b for a, b in zip(decaying, decaying[1:], strict=False)) and len(decaying) >= 4
    with pytest.raises(ValueError, match="weight_decay_end must be >= 0"):
        config(tmp_path, weight_decay_end=-1.0)
