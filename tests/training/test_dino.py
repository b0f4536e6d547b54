"""DINO through the trainer's objective layer: options and refusals, the teacher (EMA, momentum schedule),
centering, the frozen last layer, multi-crop views, ViT and ConvNeXt backbones, collapse reported and
never selected, and exact resume / DDP."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from run_checks import assert_resume_and_ddp_match_one_run, assert_two_processes_match_one

import vitkit
from vitkit.data import build_dataset
from vitkit.data.transforms import AugmentConfig
from vitkit.training import TrainConfig, train
from vitkit.training.objectives.dino import DINO, DINOConfig, cosine_momentum, dino_config, koleo_loss, sinkhorn_knopp

VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "dynamic_img_size": True}
HEAD = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "local_crops": 2, "knn_bank": 64}
FAST = dict(model="vit_pico_patch4_32", data="synthetic:128", model_kwargs=VIT, objective="dino",
            objective_args=HEAD, batch_size=32, epochs=2, lr=2e-3, warmup_epochs=1, drop_path=0.0, progress=False)


def test_bad_dino_options_are_named():
    with pytest.raises(ValueError, match="local crops larger than global ones .* expected a value in \\(0, 1\\]"):
        DINOConfig(local_size=1.5)
    with pytest.raises(ValueError, match=r"unknown dino option\(s\) \['out_dims'\]"):
        dino_config({"out_dims": 10})
    with pytest.raises(ValueError, match=r"dino centering must be one of \['centering', 'sinkhorn_knopp'\], got 'sk'"):
        DINOConfig(centering="sk")
    with pytest.raises(ValueError, match="dino koleo_weight must be >= 0, got -0.1"):
        DINOConfig(koleo_weight=-0.1)
    with pytest.raises(ValueError, match="batch_size 8 is too small for that; expected at least 16"):
        DINO(DINOConfig(), bank_set=None, num_classes=10, batch_size=8)
    objective = DINO(DINOConfig(local_crops=2), bank_set=None, num_classes=10, batch_size=32)
    objective.img_size = 32
    fixed = vitkit.create_model("vit_pico_patch4_32", embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="local crops need a backbone that takes other sizes .*dynamic_img_size: true"):
        objective.build(fixed)


def test_momentum_schedule_and_views():
    assert cosine_momentum(0.996, 0, 100) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 100, 100) == pytest.approx(1.0)
    assert 0.996 < cosine_momentum(0.996, 50, 100) < 1
    bank = build_dataset("synthetic:128", "train")
    objective = DINO(DINOConfig(local_crops=3, knn_bank=8), bank_set=bank, num_classes=10, batch_size=32)
    objective.setup(AugmentConfig(img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3))
    objective.build(vitkit.create_model("vit_pico_patch4_32", num_classes=0, **VIT))
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    globals_, locals_ = objective.views(images, torch.zeros(5), torch.Generator().manual_seed(0))
    # local crops: 0.43 * 32 = 13.8 px, rounded to 12, a multiple of the patch
    assert globals_.shape == (5, 2, 3, 32, 32) and locals_.shape == (5, 3, 3, 12, 12)
    again = objective.views(images, torch.zeros(5), torch.Generator().manual_seed(0))
    assert torch.equal(again[0], globals_) and torch.equal(again[1], locals_)


def test_sinkhorn_knopp_targets_are_distributions_balanced_over_prototypes():
    gen = torch.Generator().manual_seed(0)
    # cosine logits, most samples close to one prototype: a softmax piles the batch onto it
    prototypes = F.normalize(torch.randn(32, 16, generator=gen), dim=-1)
    samples = F.normalize(prototypes[0] + 0.3 * torch.randn(256, 16, generator=gen), dim=-1)
    logits = samples @ prototypes.T
    softmax_share = F.softmax(logits / 0.05, dim=-1).mean(0)
    q = sinkhorn_knopp(logits, 0.05, iterations=50)
    assert torch.allclose(q.sum(1), torch.ones(256), atol=1e-5)  # each sample: a distribution
    assert softmax_share.max() > 0.1  # unbalanced before ...
    assert torch.allclose(q.mean(0), torch.full((32,), 1 / 32), rtol=1e-3)  # ... each prototype 1/K after
    assert (q.argmax(1) == logits.argmax(1)).float().mean() > 0.1  # still follows the logits
    # sharp temperatures and large logits stay finite (no overflow in exp)
    assert torch.isfinite(sinkhorn_knopp(logits * 50, 0.02)).all()


def test_koleo_spreads_features():
    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(64, 8, generator=gen)
    clustered = (spread[:1] + 0.01 * spread).requires_grad_(True)
    assert koleo_loss(clustered) > koleo_loss(spread) + 1
    koleo_loss(clustered).backward()
    stepped = clustered - 0.1 * clustered.grad
    assert koleo_loss(stepped) < koleo_loss(clustered)  # its gradient pushes neighbours apart
    # under bf16 autocast (the recipes' amp) the nearest neighbours are still found in fp32
    near_ties = torch.randn(1, 64, generator=gen) + 0.02 * torch.randn(256, 64, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(koleo_loss(near_ties), koleo_loss(near_ties.double()).float(), rtol=1e-4)


@pytest.mark.parametrize("model, kwargs", [
    ("vit_pico_patch4_32", VIT),
    ("convnext_atto", {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)}),
])
def test_dino_trains_teacher_center_and_backbone(tmp_path, model, kwargs):
    summary = train(TrainConfig.from_dict({**FAST, "model": model, "model_kwargs": kwargs,
                                           "objective_args": {**HEAD, "teacher_temp": 0.02,
                                                              "warmup_teacher_temp": 0.02},
                                           "output": str(tmp_path / "run")}))
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_teacher_entropy", "train_kl", "val_model_knn_top1", "val_model_effective_rank",
                "val_model_feature_std"):
        assert all(key in r for r in rows[:-1]), key
    state = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)["model"]
    assert state["center"].abs().sum() > 0  # the center follows the teacher's outputs
    moved = [k for k in state if k.startswith("teacher.") and not torch.equal(state[k], state["student." + k[8:]])]
    assert moved, "the teacher is an EMA of the student, not a copy"
    backbone = vitkit.load(out / "final")
    assert backbone.num_classes == 0 and type(backbone).__name__ != "DINOModule"
    assert summary["selection_metric"] == "knn_top1"


def test_last_layer_is_frozen_in_the_first_epoch(tmp_path):
    train(TrainConfig.from_dict({**FAST, "epochs": 1, "ckpt_every": 1, "output": str(tmp_path / "run")}))
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))
    first = torch.load(checkpoints[0], weights_only=True)["model"]
    last = torch.load(checkpoints[-1], weights_only=True)["model"]
    assert torch.equal(first["student_head.prototypes"], last["student_head.prototypes"])
    assert not torch.equal(first["student_head.mlp.0.weight"], last["student_head.mlp.0.weight"])


def test_a_collapsed_run_is_reported_and_never_selected(tmp_path):
    # a teacher temperature far above the student's makes the teacher's targets uniform: collapse
    train(TrainConfig.from_dict({**FAST, "objective_args": {**HEAD, "teacher_temp": 50.0, "warmup_teacher_temp": 50.0},
                                 "output": str(tmp_path / "run")}))
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()[:-1]]
    assert all("uniform" in r["val_model_collapsed"] for r in rows)
    assert rows[-1]["train_teacher_entropy"] > 0.98 * math.log(HEAD["out_dim"])
    assert not (out / "best").exists()
    report = json.loads((out / "eval.json").read_text())
    assert report["selected_on"] is None and "collapsed" in report["note"]


def _pretrain_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vitkit", "pretrain", "--objective", "dino", "--model", "vit_pico_patch4_32",
            "--data", "synthetic:128", "--output", str(out), "--epochs", "2", "--batch-size", "32", "--lr", "2e-3",
            "--set", "model_kwargs={embed_dim: 32, depth: 2, num_heads: 2, dynamic_img_size: true}",
            "--set", "objective_args={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, local_crops: 2, knn_bank: 64}",
            "--set", "warmup_epochs=1", "--set", "drop_path=0", "--quiet", *extra]


def test_dino_resumes_exactly_and_two_processes_match_one(tmp_path):
    assert_resume_and_ddp_match_one_run(_pretrain_cmd, tmp_path)


def test_sinkhorn_knopp_and_koleo_train_and_balance_over_all_processes(tmp_path):
    # Sinkhorn-Knopp balances the prototypes over the global batch (all processes): 2 DDP processes equal 1
    sk = "objective_args={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, local_crops: 2, knn_bank: 64, " \
         "centering: sinkhorn_knopp}"
    assert_two_processes_match_one(_pretrain_cmd, tmp_path, "--set", sk)
    summary = train(TrainConfig.from_dict({**FAST, "epochs": 1, "output": str(tmp_path / "koleo"),
                                           "objective_args": {**HEAD, "centering": "sinkhorn_knopp",
                                                              "koleo_weight": 0.1}}))
    row = json.loads((tmp_path / "koleo" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["train_koleo"]) and math.isfinite(row["train_loss"])
    state = torch.load(sorted((tmp_path / "koleo" / "checkpoints").glob("*.pt"))[-1], weights_only=True)["model"]
    assert not state["center"].any()  # Sinkhorn-Knopp keeps no center
    assert summary["selection_metric"] == "knn_top1"

