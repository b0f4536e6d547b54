"""The same-budget model zoo on Fashion-MNIST: every entry of `vitkit/recipes/zoo/` (a ~1M-parameter config
of each family, the Fashion-MNIST recipe and a CIFAR-style ResNet as references) trained for 10 minutes of
wall time each on this CPU, selected on the validation split, then measured (test top-1, parameters, GFLOPs,
training img/s, inference img/s at batch 1 and 256, peak memory, ECE).

    python benchmarks/zoo.py [--budget-min 10] [--models vit,resnet,...] [--seeds 0] [--threads 2]
        [--out runs/zoo]
    python benchmarks/zoo.py --merge runs/zoo_a,runs/zoo_b --threads 1 --out runs/zoo   # one table from two halves

Writes the report (report.html with the Pareto chart, results.json, results.csv) to --out and prints the
machine line and the Markdown table for BENCHMARKS.md. Expect about budget x entries x seeds of training plus
a few minutes of estimates, test evaluation and timing (~2.5 hours for 12 entries at 10 minutes).
"""

import argparse
import sys

import torch

from vitkit.bench.timing import machine_line
from vitkit.zoo import markdown_table, merge_zoo, run_zoo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=10.0, help="training minutes per model and seed")
    parser.add_argument("--models", help="comma-separated zoo entries (default: all)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/zoo")
    parser.add_argument("--merge", help="comma-separated zoo report directories to merge into --out (no training; "
                        "inference re-timed here, one model after another)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.models.split(",") if args.models else None
    seeds = tuple(int(s) for s in args.seeds.split(","))
    command = "python benchmarks/zoo.py " + " ".join(sys.argv[1:])
    if args.merge:
        results = merge_zoo(args.merge.split(","), args.out, threads=args.threads, command=command)
    else:
        results = run_zoo(models, data="fashion-mnist", budget_min=args.budget_min, out=args.out, seeds=seeds,
                          threads=args.threads, command=command)
    seeds_shown = ",".join(map(str, results["seeds"]))
    print(f"\nFashion-MNIST zoo, {results['budget_min']:g} minutes of training per model, seeds {seeds_shown}; "
          f"{machine_line()}\n")
    print(markdown_table(results))
    print(f"\nreport: {args.out}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
