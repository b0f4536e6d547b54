"""Split conformal prediction for classifiers: from a classifier's logits on a calibration split, sets of classes
that contain the true label of a new image with probability at least 1 - alpha (marginally over calibration and
test draws, for exchangeable data), or for every class separately with the class-conditional (Mondrian) variant.

Nonconformity scores (higher = the class fits the image worse), for softmax probabilities p of one image:

- "lac" (also called THR): 1 - p[y] (Sadinle et al., 2019).
- "aps": the probability mass of the classes sorted by decreasing p, up to and including y (Romano et al., 2020);
  randomised, U * p[y] is subtracted with U ~ Uniform(0, 1) drawn once per image.
- "raps": the APS score plus lam * max(0, rank(y) - k_reg), rank counted from 1 for the most likely class
  (Angelopoulos et al., 2021); the penalty is never randomised.

A prediction set holds every class whose score is at most the calibrated threshold, so with randomised scores a set
may be empty: that is what makes the coverage exact rather than conservative.

Pure functions on logits and labels (tensors). Probabilities work too if passed as their logarithm, since the
softmax of log p is p. Calibrate on the validation split only; the test split is only evaluated."""

import math

import torch
from torch import Tensor

SCORES = ("lac", "aps", "raps")
ALPHAS = (0.2, 0.1, 0.05, 0.01)
RAPS_LAMBDA = 0.01
RAPS_K_REG = 1


def _check_rows(rows: Tensor, name: str = "logits") -> None:
    if rows.ndim != 2 or rows.shape[1] < 2:
        raise ValueError(f"expected {name} (N, C) with C >= 2 classes, got shape {tuple(rows.shape)}")


def _check_labels(labels: Tensor, rows: int, num_classes: int, name: str = "logits") -> None:
    if labels.shape != (rows,):
        raise ValueError(f"expected one label per row: {name} have {rows} rows, labels shape {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")


def _check(rows: Tensor, labels: Tensor, name: str = "logits") -> None:
    _check_rows(rows, name)
    _check_labels(labels, len(rows), rows.shape[1], name)


def check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha is the allowed miscoverage and must lie in the open interval (0, 1), got {alpha}")


def class_scores(logits: Tensor, score: str = "lac", randomized: bool = True, generator: torch.Generator | None = None,
                 lam: float = RAPS_LAMBDA, k_reg: int = RAPS_K_REG) -> Tensor:
    """The nonconformity score of every class for every image, (N, C) float64. `randomized` applies to "aps" and
    "raps" (one U per image, drawn from `generator`); `lam` and `k_reg` are the RAPS penalty and the number of top
    classes it spares. They are fixed rather than tuned: tuning them on the calibration split would make the score
    depend on the data it is calibrated on."""
    if score not in SCORES:
        raise ValueError(f"unknown nonconformity score {score!r}, expected one of {SCORES}")
    _check_rows(logits)
    probs = logits.detach().double().softmax(dim=1)
    if score == "lac":
        return 1 - probs
    sorted_probs, order = probs.sort(dim=1, descending=True)
    # scatter the cumulative mass and the 1-based rank back from sorted positions to class positions
    scores = torch.empty_like(probs).scatter_(1, order, sorted_probs.cumsum(dim=1))
    if randomized:
        u = torch.rand((len(probs), 1), generator=generator, dtype=torch.float64)
        scores = scores - u * probs
    if score == "raps":
        rank = torch.empty_like(probs).scatter_(1, order, torch.arange(1, probs.shape[1] + 1).double().expand_as(probs))
        scores = scores + lam * (rank - k_reg).clamp_min(0)
    return scores


def label_scores(logits: Tensor, labels: Tensor, score: str = "lac", randomized: bool = True,
                 generator: torch.Generator | None = None, lam: float = RAPS_LAMBDA, k_reg: int = RAPS_K_REG) -> Tensor:
    """The nonconformity score of each image's true label, (N,) float64: what `conformal_threshold` calibrates on.
    Arguments as in `class_scores`."""
    _check(logits, labels)
    scores = class_scores(logits, score, randomized, generator, lam, k_reg)
    return scores.gather(1, labels.long().unsqueeze(1)).squeeze(1)


def conformal_threshold(cal_scores: Tensor, alpha: float) -> float:
    """The split-conformal threshold: the ceil((n + 1)(1 - alpha))-th smallest of the n calibration scores, i.e.
    the empirical ceil((n + 1)(1 - alpha)) / n quantile read as the inverse of the empirical CDF (numpy's
    method="inverted_cdf"; MAPIE's method="lower" picks the same score). A new image's true-label score is at most
    this with probability in [1 - alpha, 1 - alpha + 1 / (n + 1)) when scores are exchangeable and without ties."""
    check_alpha(alpha)
    if cal_scores.ndim != 1:
        raise ValueError(f"expected calibration scores (n,), got shape {tuple(cal_scores.shape)}")
    n = len(cal_scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    if rank > n:
        raise ValueError(f"calibration set of {n} images is smaller than what alpha={alpha} needs (at least "
                         f"ceil(1/alpha)-1 = {math.ceil(1 / alpha) - 1} images, so that the "
                         f"ceil((n+1)(1-alpha))-th smallest score exists)")
    return float(cal_scores.double().kthvalue(rank).values)


def classwise_thresholds(cal_scores: Tensor, cal_labels: Tensor, num_classes: int, alpha: float) -> Tensor:
    """Class-conditional (Mondrian) thresholds, (C,) float64: class c's threshold is calibrated on the calibration
    images of class c only, so that coverage holds for each class, not just on average over classes."""
    check_alpha(alpha)
    if cal_scores.ndim != 1:
        raise ValueError(f"expected calibration scores (n,), got shape {tuple(cal_scores.shape)}")
    _check_labels(cal_labels, len(cal_scores), num_classes, name="calibration scores")
    needed = math.ceil(1 / alpha) - 1
    thresholds = torch.empty(num_classes, dtype=torch.float64)
    for c in range(num_classes):
        scores = cal_scores[cal_labels == c]
        if math.ceil((len(scores) + 1) * (1 - alpha)) > len(scores):
            raise ValueError(f"class {c} has {len(scores)} calibration images, fewer than the class-conditional "
                             f"threshold for alpha={alpha} needs (at least ceil(1/alpha)-1 = {needed} per class)")
        thresholds[c] = conformal_threshold(scores, alpha)
    return thresholds


def prediction_sets(scores: Tensor, threshold: float | Tensor) -> Tensor:
    """Boolean (N, C) mask of the classes in each image's set: score at most the threshold, one float or one per
    class (C,) from `classwise_thresholds`. `scores` come from `class_scores` on the images to predict."""
    if isinstance(threshold, Tensor) and threshold.shape not in ((), (scores.shape[1],)):
        raise ValueError(f"expected one threshold or one per class ({scores.shape[1]},), got shape "
                         f"{tuple(threshold.shape)}")
    return scores <= threshold


def coverage(sets: Tensor, labels: Tensor) -> float:
    """Fraction of images whose true label is in their prediction set."""
    _check(sets, labels, name="sets")
    return float(sets.gather(1, labels.long().unsqueeze(1)).double().mean())


def mean_set_size(sets: Tensor) -> float:
    return float(sets.sum(dim=1).double().mean())


def classwise_coverage(sets: Tensor, labels: Tensor) -> Tensor:
    """Coverage among the images of each class, (C,) float64; NaN for a class with no image."""
    _check(sets, labels, name="sets")
    hit = sets.gather(1, labels.long().unsqueeze(1)).squeeze(1).double()
    count = torch.bincount(labels, minlength=sets.shape[1]).double()
    hits = torch.zeros(sets.shape[1], dtype=torch.float64).scatter_add_(0, labels.long(), hit)
    return hits / count


def _min_class_coverage(sets: Tensor, labels: Tensor) -> float:
    per_class = classwise_coverage(sets, labels)
    return float(per_class[~per_class.isnan()].min())


def conformal_report(val_logits: Tensor, val_labels: Tensor, test_logits: Tensor, test_labels: Tensor,
                     alphas: tuple[float, ...] = ALPHAS, scores: tuple[str, ...] = SCORES, randomized: bool = True,
                     class_conditional: bool = False, lam: float = RAPS_LAMBDA, k_reg: int = RAPS_K_REG,
                     seed: int = 0) -> dict:
    """Thresholds calibrated on the validation split, then coverage and mean set size of the sets they give on the
    test split, which is only evaluated: {score: {alpha: {"threshold", "coverage", "mean_set_size",
    "min_class_coverage"}}}, plus, with `class_conditional`, under "classwise" the per-class thresholds and the same
    measures of the Mondrian sets. `seed` drives the randomised scores' U; `lam`, `k_reg` as in `class_scores`."""
    _check(val_logits, val_labels)
    _check(test_logits, test_labels)
    if len(test_labels) == 0:
        raise ValueError("expected test logits to evaluate the sets on, got none")
    if val_logits.shape[1] != test_logits.shape[1]:
        raise ValueError(f"expected the same classes on both splits, got {val_logits.shape[1]} (val) and "
                         f"{test_logits.shape[1]} (test)")
    num_classes = val_logits.shape[1]
    report: dict = {}
    for score in scores:
        generator = torch.Generator().manual_seed(seed)
        cal = label_scores(val_logits, val_labels, score, randomized, generator, lam, k_reg)
        test = class_scores(test_logits, score, randomized, generator, lam, k_reg)
        report[score] = {}
        for alpha in alphas:
            threshold = conformal_threshold(cal, alpha)
            sets = prediction_sets(test, threshold)
            entry = {"threshold": threshold, "coverage": coverage(sets, test_labels),
                     "mean_set_size": mean_set_size(sets),
                     "min_class_coverage": _min_class_coverage(sets, test_labels)}
            if class_conditional:
                thresholds = classwise_thresholds(cal, val_labels, num_classes, alpha)
                sets = prediction_sets(test, thresholds)
                entry["classwise"] = {"thresholds": thresholds.tolist(), "coverage": coverage(sets, test_labels),
                                      "mean_set_size": mean_set_size(sets),
                                      "min_class_coverage": _min_class_coverage(sets, test_labels)}
            report[score][alpha] = entry
    return report
