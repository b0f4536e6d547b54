"""The whole `vitkit trust` report for a trained checkpoint, timed, with the numbers BENCHMARKS.md records:
ECE before/after temperature scaling, conformal coverage and set size, the corruption table, OOD AUROC per
score and set, deletion/insertion areas per explanation method. The issue's budget: within 15 minutes on a
2-core CPU for Fashion-MNIST.

    python benchmarks/trust_report.py runs/fashion_mnist/best [--out runs/trust_fmnist] [--threads 2]
        [--fresh]   # delete saved predictions first, so every forward pass is timed

Checkpoints: `vitkit train --config fashion_mnist` (10 classes; far-OOD only) and
`vitkit train --config fashion_mnist_8class` (Bag and Ankle boot held out: near-OOD too).
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from vitkit.bench.timing import machine_line
from vitkit.trust import TrustOptions, markdown_summary, run_trust, write_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", default="runs/trust_fmnist")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep-images", type=int, default=TrustOptions.sweep_images)
    parser.add_argument("--fresh", action="store_true", help="remove saved predictions: time every forward pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.fresh and (out / "predictions").is_dir():
        shutil.rmtree(out / "predictions")
    print(f"machine: {machine_line()}, cpu capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    start = time.perf_counter()
    results, figures = run_trust(args.checkpoint, out, TrustOptions(sweep_images=args.sweep_images))
    write_report(results, figures, out)
    total = time.perf_counter() - start
    print(markdown_summary(results))
    print(f"sections (s): {json.dumps(results['seconds'])}; whole report incl. writing: {total:.0f} s")

    sweep = results["corruptions"]
    print("\n| corruption | " + " | ".join(f"s{s}" for s in sorted({r['severity'] for r in sweep['rows']}))
          + " | CE |")
    print("|---|" + "---|" * (len({r['severity'] for r in sweep['rows']}) + 1))
    for name, ce in sweep["ce"].items():
        cells = [f"{r['top1'] * 100:.1f}" for r in sweep["rows"] if r["corruption"] == name]
        print(f"| {name} | " + " | ".join(cells) + f" | {ce * 100:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
