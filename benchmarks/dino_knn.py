"""DINO features on Fashion-MNIST: kNN top-1 (k=20, cosine, T=0.07, weighted vote; the 60,000 training images
as the bank, the 10,000 test images as queries) of the pretrained teacher backbone, against the same kNN on
raw pixels and on a random-init network's features, all with the same code (vitkit.evaluation.knn).

    python benchmarks/dino_knn.py [--recipe dino_fashion_mnist] [--threads 2] [--out runs/dino_knn]
        [--pretrained DIR] [--set key=value ...]

Prints the kNN curve over training (validation kNN with the monitor's bank, from metrics.jsonl), the
collapse diagnostics, and the three test numbers for BENCHMARKS.md. The issue's targets: above raw pixels
(about 85%) and at least 10 points above the random-init network.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import vitkit
from vitkit.bench.timing import machine_line
from vitkit.cli import _parse_set
from vitkit.data import build_dataset
from vitkit.evaluation.knn import knn_top1
from vitkit.probe.features import pixel_features
from vitkit.training import TrainConfig, load_recipe, train
from vitkit.training.objectives.features import pooled_features


def bank_and_queries(data: str):
    train_set = build_dataset(data, "train", val_split=0)  # all 60,000 training images
    return train_set, build_dataset(data, "test")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="dino_fashion_mnist")
    parser.add_argument("--pretrained", help="evaluate this backbone directory instead of pretraining")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/dino_knn")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="pretraining override")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}, cpu capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    recipe = {**load_recipe(args.recipe), **_parse_set(args.set)}
    out = Path(args.out)
    backbone_dir = args.pretrained
    if backbone_dir is None:
        start = time.perf_counter()
        summary = train(TrainConfig.from_dict({**recipe, "output": str(out), "progress": False}), overwrite=True)
        print(f"pretraining: {time.perf_counter() - start:.0f} s, selected {summary['selected']}", flush=True)
        backbone_dir = str(out / summary["selected"])
        print("| epoch | train loss | teacher entropy | KL | val kNN top-1 (monitor bank) | effective rank "
              "| collapsed |")
        for line in (out / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if "val_model_knn_top1" in row or "val_model_collapsed" in row:
                print(f"| {row['epoch']} | {row['train_loss']:.3f} | {row.get('train_teacher_entropy', 0):.3f} | "
                      f"{row.get('train_kl', 0):.3f} | {row.get('val_model_knn_top1', float('nan')) * 100:.2f}% | "
                      f"{row.get('val_model_effective_rank', float('nan')):.1f} | "
                      f"{row.get('val_model_collapsed', '')} |")
    bank_set, test_set = bank_and_queries(recipe["data"])
    info = bank_set.info
    classes = info.num_classes

    def pixels(dataset):
        return pixel_features(dataset, info.mean, info.std)["pooled"], dataset.targets

    def network(model):
        from vitkit.data.transforms import eval_transform

        size = model.input_spec.img_size[0]
        tf = lambda images: eval_transform(images, size, 1.0, info.mean, info.std)  # noqa: E731
        return pooled_features(model, bank_set, tf), pooled_features(model, test_set, tf)

    results = {}
    start = time.perf_counter()
    (bank, bank_y), (test, test_y) = pixels(bank_set), pixels(test_set)
    results["raw pixels"] = knn_top1(bank, bank_y, test, test_y, classes)
    pretrained = vitkit.load(backbone_dir).eval()
    (bank, bank_y), (test, test_y) = network(pretrained)
    results["DINO backbone"] = knn_top1(bank, bank_y, test, test_y, classes)
    seed = int(recipe.get("seed", 0))
    torch.manual_seed(seed)  # the pretraining run's seed: a seed sweep gives the spread of both
    random_init = vitkit.create_model(recipe["model"], num_classes=0, in_chans=info.in_chans,
                                      **recipe.get("model_kwargs", {})).eval()
    (bank, bank_y), (test, test_y) = network(random_init)
    results[f"random init (seed {seed})"] = knn_top1(bank, bank_y, test, test_y, classes)
    print(f"\nkNN top-1 on the test split (k=20, T=0.07, bank: 60,000 training images; "
          f"{time.perf_counter() - start:.0f} s)")
    print("| features | test top-1 |")
    for name, top1 in results.items():
        print(f"| {name} | {top1 * 100:.2f}% |")
    gain = results["DINO backbone"] - results[f"random init (seed {seed})"]
    ok = results["DINO backbone"] > results["raw pixels"] and gain >= 0.10
    print(f"target (above raw pixels, >= 10 points above random init): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
