"""MAE through the trainer's objective layer: masking, the loss on hidden patches only, refusals, a short run
that writes a loadable backbone, reconstructions and the kNN / collapse diagnostics, fine-tuning from it,
and exact resume / DDP."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from run_checks import assert_resume_and_ddp_match_one_run

import vitkit
from vitkit.models._masking import embed_kept, random_keep
from vitkit.training import TrainConfig, train
from vitkit.training.objectives.mae import MAE, MAEConfig, mae_config, patchify, unpatchify

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
MAE_ARGS = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2, "knn_bank": 64}
FAST = dict(model="vit_pico_patch4_32", data="synthetic:128", model_kwargs=TINY, objective="mae",
            objective_args=MAE_ARGS, batch_size=32, epochs=2, lr=2e-3, warmup_epochs=1, drop_path=0.0, progress=False)


def test_bad_mae_options_are_named():
    for ratio in (0, 1, 1.5):
        with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
            MAEConfig(mask_ratio=ratio)
    with pytest.raises(ValueError, match=r"unknown mae option\(s\) \['mask_raito'\]; valid: mask_ratio"):
        mae_config({"mask_raito": 0.5})
    with pytest.raises(ValueError, match="objective must be one of supervised, mae"):
        TrainConfig(objective="simclr")


def test_mae_refuses_a_hierarchical_family():
    objective = MAE(MAEConfig(), bank_set=None, num_classes=10)
    convnext = vitkit.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
    with pytest.raises(ValueError, match="MAE needs a token-sequence backbone .* ConvNeXt is not one"):
        objective.build(convnext)


def test_masks_patchify_and_kept_embedding():
    g = torch.Generator().manual_seed(3)
    kept, mask = random_keep(4, 16, 4, g)
    assert kept.shape == (4, 4) and mask.sum(dim=1).tolist() == [12] * 4
    assert not mask.gather(1, kept).any()  # kept patches are the visible ones
    again, _ = random_keep(4, 16, 4, torch.Generator().manual_seed(3))
    assert torch.equal(kept, again)  # the step's generator decides: identical on every process
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(unpatchify(patchify(images, 2), 2, 3), images)
    # keeping every patch reproduces the backbone's own features
    model = vitkit.create_model("vit_pico_patch4_32", **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    everything = torch.arange(64).expand(2, -1)
    torch.testing.assert_close(model.forward_tokens(embed_kept(model, x, everything)), model.forward_features(x))


def test_loss_counts_hidden_patches_only():
    objective = MAE(MAEConfig(norm_pix_loss=False), bank_set=None, num_classes=10)
    objective.patch = 2
    images = torch.randn(2, 1, 4, 4)  # 4 patches of 4 pixels
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    target = patchify(images, 2)
    pred = target.clone()
    pred[mask] += 1.0  # every hidden pixel off by 1
    assert objective.reconstruction_loss(pred, images, mask).item() == pytest.approx(1.0)
    pred[~mask] += 100.0  # visible patches do not count
    assert objective.reconstruction_loss(pred, images, mask).item() == pytest.approx(1.0)


def test_mae_run_writes_a_backbone_reconstructions_and_diagnostics(tmp_path):
    summary = train(TrainConfig.from_dict({**FAST, "output": str(tmp_path / "mae")}))
    out = tmp_path / "mae"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("val_model_knn_top1", "val_model_feature_std", "val_model_effective_rank"):
        assert all(key in r for r in rows[:-1]), key
    assert summary["selection_metric"] == "knn_top1"
    assert sorted(p.name for p in (out / "reconstructions").glob("*.png")) == ["epoch_0001.png", "epoch_0002.png"]
    backbone = vitkit.load(out / summary["selected"])
    assert backbone.num_classes == 0 and backbone.config.global_pool == "avg"  # a feature extractor
    assert not any(k.startswith("decoder") for k in backbone.state_dict())
    report = json.loads((out / "eval.json").read_text())
    assert report["selected"]["bank_size"] == 64 and 0 <= report["selected"]["top1"] <= 1

    # fine-tuning from it: the backbone is taken whole, the head is new
    tuned = train(TrainConfig.from_dict({
        "model": "vit_pico_patch4_32", "data": "synthetic:128", "model_kwargs": {**TINY, "global_pool": "avg"},
        "init_checkpoint": str(out / "final"), "labels_per_class": 4, "batch_size": 16, "epochs": 1,
        "output": str(tmp_path / "ft"), "progress": False}))
    assert tuned["report"].num_samples == 32
    with pytest.raises(ValueError, match="init_checkpoint .* its backbone does not match .* norm.weight"):
        train(TrainConfig.from_dict({"model": "vit_pico_patch4_32", "data": "synthetic:128", "model_kwargs": TINY,
                                     "init_checkpoint": str(out / "final"), "output": str(tmp_path / "ft2"),
                                     "progress": False}))


def test_label_subsets_are_fixed_and_stratified():
    from vitkit.data.base import label_subset

    labels = torch.arange(10).repeat(20)
    chosen = label_subset(labels, per_class=3, seed=1)
    assert len(chosen) == 30 and torch.bincount(labels[chosen]).tolist() == [3] * 10
    assert (label_subset(labels, per_class=3, seed=1) == chosen).all()
    assert len(label_subset(labels, fraction=0.1)) == 20
    with pytest.raises(ValueError, match="labels_per_class=30, but class 0 has only 20 images"):
        label_subset(labels, per_class=30)


def _pretrain_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vitkit", "pretrain", "--objective", "mae", "--model", "vit_pico_patch4_32",
            "--data", "synthetic:128", "--output", str(out), "--epochs", "2", "--batch-size", "32", "--lr", "2e-3",
            "--set", "model_kwargs={embed_dim: 32, depth: 2, num_heads: 2}", "--set", "warmup_epochs=1",
            "--set", "objective_args={decoder_dim: 16, decoder_depth: 1, decoder_heads: 2, knn_bank: 64}",
            "--set", "drop_path=0", "--quiet", *extra]


def test_mae_resumes_exactly_and_two_processes_match_one(tmp_path):
    assert_resume_and_ddp_match_one_run(_pretrain_cmd, tmp_path)




def test_every_shipped_recipe_is_a_valid_config():
    from vitkit.training.config import RECIPES_DIR, load_recipe

    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    assert {"digits", "mae_digits", "dino_digits", "mae_fashion_mnist", "dino_fashion_mnist"} <= set(names)
    for name in names:
        TrainConfig.from_dict(load_recipe(name))


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--objective", "mae", "--model", "convnext_atto", "--epochs", "1"],
     "MAE needs a token-sequence backbone"),
    (["pretrain", "--objective", "mae", "--set", "objective_args={mask_ratio: 1.2}"],
     r"mask_ratio must be in \(0, 1\)"),
    (["pretrain", "--objective", "dino", "--batch-size", "8"], "batch_size 8 is too small"),
    (["pretrain", "--objective", "dino", "--set", "objective_args={local_size: 2}"], "local crops larger than global"),
    (["train", "--config", "mae_digits"], "run it with vitkit pretrain --objective mae"),
])
def test_pretrain_bad_input_is_one_line(tmp_path, capsys, argv, message):
    from vitkit.cli import main

    assert main([*argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
