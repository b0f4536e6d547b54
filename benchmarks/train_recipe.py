"""Wall time and test top-1 of a training recipe, end to end, as the README's main job runs it.

    python benchmarks/train_recipe.py digits [--seeds 0 1 2] [--threads 2] [--budget-s 180] [--target 0.97]
                                             [--set key=value ...] [--out DIR]

Each seed is one full run: best/ selected on the validation split carved from the training data, then
the test split evaluated once for the selected and for the final model. Prints one markdown row per
seed and the mean and spread for BENCHMARKS.md; exits 1 if the mean test top-1 of the selected models
misses the target or a run exceeds the budget.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitkit.bench.timing import machine_line
from vitkit.cli import _parse_set
from vitkit.training import TrainConfig, load_recipe, train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=180)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe option")
    parser.add_argument("--out", help="keep the runs here, one folder per seed (default: temporary, deleted after)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}, cpu capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    print("| recipe | seed | epochs | amp | wall s (budget) | val top-1 | selected epoch | test top-1 selected "
          "| test top-1 final |", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            out = Path(args.out or tmp) / f"seed{seed}"
            options = {**load_recipe(args.recipe), **_parse_set(args.set), "output": str(out), "seed": seed,
                       "progress": False}
            cfg = TrainConfig.from_dict(options)
            start = time.perf_counter()
            summary = train(cfg, overwrite=True)
            wall = time.perf_counter() - start
            selected, final = summary["report"].top1, summary["final_report"].top1
            results.append((wall, selected, final))
            val = summary["best_val_top1"]
            print(f"| {args.recipe} | {seed} | {cfg.epochs} | {summary['amp']} | {wall:.0f} ({args.budget_s:.0f}) | "
                  f"{'-' if val is None else f'{val * 100:.2f}%'} | {summary['selected_epoch']} | "
                  f"{selected * 100:.2f}% | {final * 100:.2f}% |", flush=True)
    walls, selected, finals = zip(*results, strict=True)
    spread = lambda v: statistics.stdev(v) * 100 if len(v) > 1 else 0.0
    mean = statistics.mean(selected)
    print(f"\n{len(results)} seeds: test top-1 of the selected model {mean * 100:.2f}% +- {spread(selected):.2f} "
          f"(min {min(selected) * 100:.2f}%, max {max(selected) * 100:.2f}%); final model "
          f"{statistics.mean(finals) * 100:.2f}% +- {spread(finals):.2f}; wall {statistics.mean(walls):.0f} s "
          f"(max {max(walls):.0f} s)")
    ok = mean >= args.target and max(walls) <= args.budget_s
    print(f"target {args.target * 100:.0f}% within {args.budget_s:.0f} s: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
