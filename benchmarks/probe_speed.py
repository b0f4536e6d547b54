"""Probe speed against scikit-learn on the same features, in one process (threads fixed, warmed up,
interleaved, median):

- kNN: `vitkit.evaluation.knn.knn_classify` (uniform weights, k=20) against scikit-learn's brute-force
  `KNeighborsClassifier(metric="cosine")` over a 60,000-image bank and 10,000 queries; predictions must be
  identical. Target: >= 3x.
- Linear probe: `linear_probe_grid` (every head of the grid trained in one pass over the cached features)
  against fitting the same number of scikit-learn `LogisticRegression`s one after another. Target: >= 5x.

    python benchmarks/probe_speed.py [--features probe_cache_entry_dir_or_none] [--threads 2] [--repeats 3]

Features: the pooled features of a Fashion-MNIST backbone when `--backbone DIR` is given (through the probe
cache), else a random-init vit_nano_convstem_28 (the speed does not depend on what the features mean).
"""

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from vitkit.bench.timing import machine_line
from vitkit.evaluation.knn import knn_classify
from vitkit.evaluation.linear import linear_probe_grid
from vitkit.probe import FeatureCache, ProbeOptions
from vitkit.probe.backbones import resolve
from vitkit.probe.features import feature_sets
from vitkit.probe.run import Extractor


def features(backbone: str, cache_dir: str | None):
    from vitkit.data import build_dataset

    opts = ProbeOptions(data="fashion-mnist", val_split=0, progress=True)
    info = build_dataset("fashion-mnist", "test").info
    ex = Extractor(resolve(backbone, info), opts, FeatureCache(cache_dir), print)
    return ex.split("train"), ex.split("test")


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_nano_convstem_28")
    parser.add_argument("--cache-dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--linear-train", type=int, default=10000, help="training rows for the linear comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    print(f"machine: {machine_line()}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"threads {args.threads}", flush=True)
    train, test = features(args.backbone, args.cache_dir)
    bank, bank_y, queries = train["pooled"], train["labels"], test["pooled"]
    print(f"features: {args.backbone}, bank {tuple(bank.shape)}, queries {tuple(queries.shape)}")

    # kNN: interleaved rounds, each one run of each
    ours_t, theirs_t = [], []
    for _ in range(args.repeats + 1):
        t, ours = timed(lambda: knn_classify(bank, bank_y, queries, 10, ks=(20,), weighting="uniform")[20])
        ours_t.append(t)
        knn = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute", weights="uniform")
        t, theirs = timed(lambda: knn.fit(bank.numpy(), bank_y.numpy()).predict(queries.numpy()))  # noqa: B023
        theirs_t.append(t)
    ours_s, theirs_s = statistics.median(ours_t[1:]), statistics.median(theirs_t[1:])  # first round: warm-up
    same = bool(np.array_equal(ours.numpy(), theirs))
    print(f"| kNN 60k x 10k, k=20, uniform | vitkit {ours_s:.2f} s | scikit-learn brute {theirs_s:.2f} s | "
          f"{theirs_s / ours_s:.1f}x | identical predictions: {same} |")

    # linear: the grid's heads in one pass vs as many LogisticRegressions one after another
    n = args.linear_train
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(bank), generator=g)
    tr, va = order[:n], order[n:n + 5000]
    sets = feature_sets(train, (1, 4))
    lrs = ProbeOptions(data="fashion-mnist").lrs
    heads = len(lrs) * len(sets)
    grid_t, sk_t = [], []
    for _ in range(2):
        t, result = timed(lambda: linear_probe_grid({k: v[tr] for k, v in sets.items()}, bank_y[tr],
                                                    {k: v[va] for k, v in sets.items()}, bank_y[va], None, None, 10,
                                                    lrs=lrs, epochs=10))
        grid_t.append(t)
        start = time.perf_counter()
        for name in sets:
            x = sets[name][tr].numpy()
            for C in np.logspace(-3, 3, len(lrs)):
                LogisticRegression(C=C, max_iter=100).fit(x, bank_y[tr].numpy())
        sk_t.append(time.perf_counter() - start)
    print(f"| linear grid, {heads} heads ({len(sets)} feature sets x {len(lrs)} lrs, 10 epochs), {n} rows | vitkit "
          f"{grid_t[-1]:.2f} s | {heads} scikit-learn LogisticRegression (lbfgs, max_iter 100) {sk_t[-1]:.2f} s | "
          f"{sk_t[-1] / grid_t[-1]:.1f}x | selected {result.selected} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
