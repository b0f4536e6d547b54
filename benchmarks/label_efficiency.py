"""MAE label efficiency on Fashion-MNIST: pretrain without labels, then fine-tune on 60 / 600 / all labels per
class from the pretrained backbone and from random init with the same recipe and budget.

    python benchmarks/label_efficiency.py [--pretrain-recipe mae_fashion_mnist] [--pretrain-set key=value ...]
        [--labels 60 600 all] [--seeds 0 1 2] [--threads 2] [--out runs/label_efficiency] [--pretrained DIR]
        [--set key=value ...]

Every number is the test top-1 of the model selected on the validation split (carved from the training
images; the labelled subsets are drawn from what remains, with label_seed 0 for every seed). Prints
markdown rows for BENCHMARKS.md and the mean and spread over seeds; the issue's target is +5 points at
60 labels per class (600 labels). Epochs per label count keep a comparable number of optimizer steps.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from vitkit.bench.timing import machine_line
from vitkit.cli import _parse_set
from vitkit.training import TrainConfig, load_recipe, train

# ~400 / ~700 / ~430 optimizer steps at batch 128 (600 / 6,000 / 55,000 labelled images): 50k / 90k / 55k
# images, about 3 / 4 / 2.5 minutes a run in bf16 on 2 AVX512-BF16 cores
EPOCHS = {"60": 100, "600": 15, "all": 1}


def finetune(pretrained: str | None, labels: str, seed: int, out: Path, overrides: dict) -> tuple[float, float]:
    # about 10 validation evaluations per run: a 5,000-image evaluation per 4-step epoch would dominate
    options = {**load_recipe("fashion_mnist_finetune"), "epochs": EPOCHS[labels], "seed": seed,
               "eval_every": max(1, EPOCHS[labels] // 10), "output": str(out), "progress": False, **overrides}
    if labels != "all":
        options["labels_per_class"] = int(labels)
    if pretrained:
        options["init_checkpoint"] = pretrained
    start = time.perf_counter()
    summary = train(TrainConfig.from_dict(options), overwrite=True)
    return summary["report"].top1, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-recipe", default="mae_fashion_mnist")
    parser.add_argument("--pretrained", help="use this backbone directory instead of pretraining")
    parser.add_argument("--labels", nargs="+", default=["60", "600", "all"], choices=list(EPOCHS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/label_efficiency")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fine-tuning override")
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                        help="pretraining override, e.g. epochs=6 on an AVX2-only CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    print(f"machine: {machine_line()}, cpu capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    pretrained = args.pretrained
    if pretrained is None:
        options = {**load_recipe(args.pretrain_recipe), **_parse_set(args.pretrain_set),
                   "output": str(out / "pretrain"), "progress": False}
        start = time.perf_counter()
        summary = train(TrainConfig.from_dict(options), overwrite=True)
        print(f"pretraining ({args.pretrain_recipe}, {options['epochs']} epochs): {time.perf_counter() - start:.0f} s, "
              f"selected {summary['selected']} (val kNN top-1 {summary['best_val_knn_top1'] * 100:.2f}%), test kNN "
              f"top-1 {summary['report'].top1 * 100:.2f}%", flush=True)
        pretrained = str(out / "pretrain" / summary["selected"])
    overrides = _parse_set(args.set)
    print("| labels per class | init | seed | epochs | wall s | test top-1 (val-selected) |", flush=True)
    results: dict[tuple[str, str], list[float]] = {}
    for labels in args.labels:
        for init, source in (("pretrained", pretrained), ("random", None)):
            for seed in args.seeds:
                top1, wall = finetune(source, labels, seed, out / f"ft_{labels}_{init}_{seed}", overrides)
                results.setdefault((labels, init), []).append(top1)
                print(f"| {labels} | {init} | {seed} | {EPOCHS[labels]} | {wall:.0f} | {top1 * 100:.2f}% |", flush=True)
    print("\n| labels per class | pretrained (mean +- sd) | random init (mean +- sd) | gain |")
    spread = lambda v: statistics.stdev(v) * 100 if len(v) > 1 else 0.0
    for labels in args.labels:
        p, r = results[(labels, "pretrained")], results[(labels, "random")]
        print(f"| {labels} | {statistics.mean(p) * 100:.2f}% +- {spread(p):.2f} | {statistics.mean(r) * 100:.2f}% +- "
              f"{spread(r):.2f} | {(statistics.mean(p) - statistics.mean(r)) * 100:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
