"""Wall time and test top-1 of a training recipe, end to end, as the README's main job runs it.

    python benchmarks/train_recipe.py digits [--threads 2] [--budget-s 180] [--target 0.97] [--out DIR]

Prints one markdown row for BENCHMARKS.md; exits 1 if the run misses the accuracy target or budget.
"""

import argparse
import sys
import tempfile
import time

import torch

from vitkit.bench.timing import machine_line
from vitkit.training import TrainConfig, load_recipe, train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=180)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--out", help="keep the run here (default: a temporary directory, deleted after)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        cfg = TrainConfig.from_dict({**load_recipe(args.recipe), "output": out, "progress": False})
        start = time.perf_counter()
        summary = train(cfg)
        wall = time.perf_counter() - start
    top1 = summary["report"].top1
    ok = top1 >= args.target and wall <= args.budget_s
    print(f"machine: {machine_line()}")
    print("| recipe | model | epochs | wall s (budget) | test top-1 (target) | met |")
    print(f"| {args.recipe} | {cfg.model} | {cfg.epochs} | {wall:.0f} ({args.budget_s:.0f}) | "
          f"{top1 * 100:.2f}% ({args.target * 100:.0f}%) | {'yes' if ok else 'no'} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
