"""Out-of-distribution detection: post-hoc scores from a classifier's logits or features, and the metrics that
compare the scores of an in-distribution test set with those of an OOD set.

Convention: every score is "higher = more in-distribution", so the metrics treat in-distribution as the
positive class (AUROC = probability that an in-distribution sample outscores an OOD one; FPR@95 = share of OOD
samples accepted at the threshold that accepts 95% of in-distribution). Scores come back as float64 tensors:
in float32 the softmax saturates at exactly 1.0 for confident predictions, and such ties blur the metrics.

Pure functions on tensors; the feature-based scores walk the queries in chunks so memory stays bounded."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_logits(logits: Tensor) -> None:
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"expected logits (N, C) with C >= 2 classes, got shape {tuple(logits.shape)}")


def _check_chunk(chunk: int) -> None:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")


def msp(logits: Tensor) -> Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
    Out-of-Distribution Examples in Neural Networks", ICLR 2017); in [1/C, 1]."""
    _check_logits(logits)
    return logits.double().softmax(dim=1).amax(dim=1)


def max_logit(logits: Tensor) -> Tensor:
    """Largest unnormalised logit (Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World
    Settings", ICML 2022)."""
    _check_logits(logits)
    return logits.double().amax(dim=1)


def energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative free energy T * logsumexp(logits / T) (Liu et al., "Energy-based Out-of-distribution
    Detection", NeurIPS 2020: their energy is E = -T logsumexp(f / T), and the score is -E)."""
    _check_logits(logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature * torch.logsumexp(logits.double() / temperature, dim=1)


@dataclass(frozen=True)
class MahalanobisStats:
    """Class means (C, D) and the pseudo-inverse of the shared covariance (D, D), both float64."""

    means: Tensor
    precision: Tensor


@torch.no_grad()
def fit_mahalanobis(features: Tensor, labels: Tensor, num_classes: int | None = None,
                    chunk: int = 4096) -> MahalanobisStats:
    """Class means and tied covariance of training features (Lee et al., "A Simple Unified Framework for
    Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018), computed in float64.

    The covariance is the pooled within-class one, sum_c sum_{y_i = c} (x_i - mu_c)(x_i - mu_c)^T / N, and is
    inverted with a pseudo-inverse (as scikit-learn's EmpiricalCovariance does for the reference code): a
    rank-deficient covariance (D >= N, collapsed features) then works, and directions without training variance
    do not count in the distance. The classes are 0..num_classes-1 (default: labels.max() + 1) and each must
    have a training sample; labels with gaps by design should be remapped first, e.g. with
    torch.unique(labels, return_inverse=True)."""
    _check_chunk(chunk)
    if features.ndim != 2:
        raise ValueError(f"expected features (N, D), got shape {tuple(features.shape)}")
    if labels.shape != (len(features),):
        raise ValueError(f"features have {len(features)} rows but labels has shape {tuple(labels.shape)}; "
                         f"expected ({len(features)},)")
    if len(features) == 0:
        raise ValueError("Mahalanobis needs training features, got 0 rows")
    if not torch.isfinite(features).all():
        raise ValueError("training features contain NaN or inf; expected finite values")
    labels = labels.to(device=features.device, dtype=torch.long)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{low}, {high}]")
    counts = torch.bincount(labels, minlength=num_classes)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"class {missing[0]} has no training samples (missing classes: {missing}); expected "
                         f"every class in [0, {num_classes}) to appear")
    if len(features) <= num_classes:
        raise ValueError(f"a covariance needs more samples than classes, got {len(features)} samples for "
                         f"{num_classes} classes")

    dim = features.shape[1]
    means = torch.zeros(num_classes, dim, dtype=torch.float64, device=features.device)
    for start in range(0, len(features), chunk):
        means.index_add_(0, labels[start:start + chunk], features[start:start + chunk].double())
    means /= counts.unsqueeze(1)
    covariance = torch.zeros(dim, dim, dtype=torch.float64, device=features.device)
    for start in range(0, len(features), chunk):
        centred = features[start:start + chunk].double() - means[labels[start:start + chunk]]
        covariance += centred.T @ centred
    covariance /= len(features)
    return MahalanobisStats(means, torch.linalg.pinv(covariance, hermitian=True))


@torch.no_grad()
def mahalanobis_score(stats: MahalanobisStats, features: Tensor, chunk: int = 1024) -> Tensor:
    """-min_c (x - mu_c)^T Sigma^+ (x - mu_c) per row of `features` (Q, D): the negative squared Mahalanobis
    distance to the closest class, Lee et al.'s confidence score without input preprocessing or feature
    ensembles. Squared as in the paper; the square root would rank the samples the same."""
    _check_chunk(chunk)
    dim = stats.means.shape[1]
    if features.ndim != 2 or features.shape[1] != dim:
        raise ValueError(f"expected features (Q, {dim}) like the training features, got shape "
                         f"{tuple(features.shape)}")
    means, precision = stats.means, stats.precision
    # (x - mu)^T P (x - mu) = x^T P x - 2 x^T P mu + mu^T P mu: one (chunk, C) block instead of (chunk, C, D).
    means_projected = means @ precision
    means_term = (means_projected * means).sum(dim=1)
    scores = []
    for start in range(0, len(features), chunk):
        x = features[start:start + chunk].to(device=means.device, dtype=torch.float64)
        distance = (x @ precision * x).sum(dim=1, keepdim=True) - 2 * x @ means_projected.T + means_term
        scores.append(-distance.clamp_min(0).amin(dim=1))  # clamp: rounding can dip just below 0
    return torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64, device=means.device)


@torch.no_grad()
def knn_score(bank_features: Tensor, query_features: Tensor, k: int = 50, chunk: int = 1024) -> Tensor:
    """-(Euclidean distance from each L2-normalised query to its k-th nearest L2-normalised bank feature)
    (Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022).

    k=50 is the paper's choice for CIFAR-10-sized banks; it uses k=1000 for the full ImageNet training set.
    The queries are a set apart from the bank, so no query is excluded from its own neighbours. Computed in
    float32 from cosine similarities (|a - b| = sqrt(2 - 2 a.b) for unit vectors), one (chunk, N) block at a time."""
    _check_chunk(chunk)
    if bank_features.ndim != 2 or query_features.ndim != 2:
        raise ValueError(f"kNN needs 2-D features, got bank {tuple(bank_features.shape)} and queries "
                         f"{tuple(query_features.shape)}")
    if bank_features.shape[1] != query_features.shape[1]:
        raise ValueError(f"bank has {bank_features.shape[1]}-dim features but queries have "
                         f"{query_features.shape[1]}; expected equal")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > len(bank_features):
        raise ValueError(f"k={k} is larger than the feature bank ({len(bank_features)} rows)")
    bank = F.normalize(bank_features.float(), dim=1)
    scores = []
    for start in range(0, len(query_features), chunk):
        queries = F.normalize(query_features[start:start + chunk].to(device=bank.device, dtype=torch.float32), dim=1)
        kth_similarity = (queries @ bank.T).topk(k, dim=1).values[:, -1]
        scores.append(-(2 - 2 * kth_similarity).clamp_min(0).sqrt())
    return torch.cat(scores) if scores else torch.zeros(0, device=bank.device)


def _check_scores(scores_in: Tensor, scores_out: Tensor) -> tuple[Tensor, Tensor]:
    """Both score sets as float64 CPU tensors, after checking they are 1-D, non-empty and free of NaN."""
    checked = []
    for name, scores in (("scores_in", scores_in), ("scores_out", scores_out)):
        scores = torch.as_tensor(scores).detach().double().cpu()
        if scores.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(scores.shape)}")
        if len(scores) == 0:
            raise ValueError(f"{name} is empty; expected at least one score")
        nans = int(scores.isnan().sum())
        if nans:
            raise ValueError(f"{name} contains {nans} NaN scores; expected numbers (inf is allowed)")
        checked.append(scores)
    return checked[0], checked[1]


def auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """Area under the ROC curve with in-distribution as the positive class: P(in > out) + P(in = out) / 2, exactly,
    from the Mann-Whitney U statistic on average ranks (ties between the sets count half)."""
    scores_in, scores_out = _check_scores(scores_in, scores_out)
    _, inverse, counts = torch.unique(torch.cat([scores_in, scores_out]), return_inverse=True, return_counts=True)
    counts = counts.double()
    ranks = counts.cumsum(0) - counts + (counts + 1) / 2  # average 1-based rank of each distinct value
    rank_sum = ranks[inverse[:len(scores_in)]].sum()
    u = rank_sum - len(scores_in) * (len(scores_in) + 1) / 2
    return float(u / (len(scores_in) * len(scores_out)))


def roc_curve(scores_in: Tensor, scores_out: Tensor) -> tuple[Tensor, Tensor]:
    """(fpr, tpr), float64 tensors from (0, 0) to (1, 1): one point per distinct score t, in decreasing order,
    accepting as in-distribution every sample with score >= t (scikit-learn's roc_curve with
    drop_intermediate=False, in-distribution as the positive class)."""
    scores_in, scores_out = _check_scores(scores_in, scores_out)
    values, inverse = torch.unique(torch.cat([scores_in, scores_out]), return_inverse=True)
    accepted = []
    for part in (inverse[:len(scores_in)], inverse[len(scores_in):]):
        per_value = torch.bincount(part, minlength=len(values)).flip(0).cumsum(0)  # thresholds high to low
        accepted.append(torch.cat([per_value.new_zeros(1), per_value]).double() / len(part))
    tpr, fpr = accepted
    return fpr, tpr


def fpr_at_tpr(scores_in: Tensor, scores_out: Tensor, tpr: float = 0.95) -> float:
    """Share of OOD samples accepted at the highest threshold t that accepts at least `tpr` of the
    in-distribution samples, accepting a sample when its score is >= t. Samples tied at t are all accepted, so
    the true positive rate reached can exceed `tpr`; this is fpr[first index with tpr_curve >= tpr] on the full
    ROC curve, the usual FPR@95TPR when tpr=0.95."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    fpr_curve, tpr_curve = roc_curve(scores_in, scores_out)
    return float(fpr_curve[torch.searchsorted(tpr_curve, tpr)])


def ood_report(in_scores: dict[str, Tensor], out_scores: dict[str, dict[str, Tensor]]) -> dict[str, dict]:
    """{score name: {OOD set: {"auroc": ..., "fpr95": ...}}} from the in-distribution test scores
    in_scores[score name] and the OOD scores out_scores[OOD set][score name]; every OOD set must carry the
    same score names as in_scores."""
    if not in_scores or not out_scores:
        raise ValueError(f"ood_report needs at least one score and one OOD set, got scores {sorted(in_scores)} "
                         f"and OOD sets {sorted(out_scores)}")
    for ood_set, scores in out_scores.items():
        if scores.keys() != in_scores.keys():
            raise ValueError(f"OOD set {ood_set!r} has scores {sorted(scores)}; expected the same names as "
                             f"in_scores: {sorted(in_scores)}")
    return {name: {ood_set: {"auroc": auroc(in_scores[name], scores[name]),
                             "fpr95": fpr_at_tpr(in_scores[name], scores[name])}
                   for ood_set, scores in out_scores.items()}
            for name in in_scores}
