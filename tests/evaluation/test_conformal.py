"""Split conformal prediction: the coverage guarantee checked empirically over many random calibration/test splits
(marginal and per class), thresholds and scores against a second implementation (MAPIE, in the dev extras) and a
plain numpy re-derivation, and clear errors on bad input."""

import math

import numpy as np
import pytest
import torch

from vitkit.evaluation.conformal import (
    class_scores,
    classwise_coverage,
    classwise_thresholds,
    conformal_report,
    conformal_threshold,
    coverage,
    label_scores,
    mean_set_size,
    prediction_sets,
)

K = 10


def _pool(n=2000, classes=K, seed=0):
    """Gaussian logits plus a label signal that grows with the class index, so class 0 is the hardest."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += torch.linspace(0.5, 3.0, classes)[labels]
    return logits, labels


def _split_coverages(scores, labels, n_cal, alpha, splits, threshold=conformal_threshold, seed=1):
    """Coverage on the test part of `splits` random calibration/test splits of a pool of scored images. Each
    image's randomisation U was drawn once with its scores, as part of the image: the pool stays exchangeable."""
    true = scores.gather(1, labels.unsqueeze(1)).squeeze(1)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(splits):
        perm = torch.randperm(len(labels), generator=g)
        cal, test = perm[:n_cal], perm[n_cal:]
        out.append(coverage(prediction_sets(scores[test], threshold(true[cal], alpha)), labels[test]))
    return torch.tensor(out, dtype=torch.float64)


def _mean_and_tolerance(covs):
    """Mean coverage over splits and 4 standard errors of it (splits are independent given the pool)."""
    return covs.mean().item(), 4 * covs.std().item() / math.sqrt(len(covs))


def _exact(n_cal, alpha):
    return math.ceil((n_cal + 1) * (1 - alpha)) / (n_cal + 1)


@pytest.mark.parametrize("alpha", [0.1, 0.05])
@pytest.mark.parametrize("score", ["lac", "aps", "raps"])
def test_marginal_coverage_guarantee_over_random_splits(score, alpha):
    """Over random splits of a fixed pool, a test image and the calibration images are exchangeable, so the mean
    coverage is exactly k / (n + 1) with k = ceil((n + 1)(1 - alpha)) (no ties: APS and RAPS are randomised), which
    lies in [1 - alpha, 1 - alpha + 1 / (n + 1)). Tolerance: 4 standard errors of the mean over splits."""
    logits, labels = _pool()
    scores = class_scores(logits, score, randomized=True, generator=torch.Generator().manual_seed(2))
    n_cal = 500
    mean, tol = _mean_and_tolerance(_split_coverages(scores, labels, n_cal, alpha, splits=300))
    assert 1 - alpha - tol <= mean <= 1 - alpha + 1 / (n_cal + 1) + tol
    assert mean == pytest.approx(_exact(n_cal, alpha), abs=tol)


def test_coverage_check_catches_wrong_quantiles():
    """The checks above can fail. With n = 100 and 1000 splits the tolerance (about 0.004) is well under the
    1 / (n + 1) that one order statistic moves the coverage by, so: the plain (1 - alpha) quantile, the
    ceil(n(1 - alpha))-th score without the n + 1 correction, under-covers (90/101 < 0.9); numpy's
    method="higher" at level k / n, the usual one-liner, takes the (k + 1)-th score and misses the exact
    k / (n + 1) (92/101 instead of 91/101); ours meets both checks."""
    logits, labels = _pool()
    scores = class_scores(logits, "lac")
    n_cal, alpha = 100, 0.1
    k = math.ceil((n_cal + 1) * (1 - alpha))
    plain = lambda cal, a: float(cal.kthvalue(math.ceil(len(cal) * (1 - a))).values)
    higher = lambda cal, a: float(np.quantile(cal.numpy(), k / len(cal), method="higher"))
    for threshold, covers, exact in ((conformal_threshold, True, True), (plain, False, False), (higher, True, False)):
        mean, tol = _mean_and_tolerance(_split_coverages(scores, labels, n_cal, alpha, 1000, threshold))
        assert (mean >= 1 - alpha - tol) is covers, (threshold, mean, tol)
        assert (abs(mean - _exact(n_cal, alpha)) <= tol) is exact, (threshold, mean, tol)


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_class_conditional_coverage_holds_for_every_class(score):
    """Mondrian thresholds cover each class at 1 - alpha (within 4 standard errors over splits), while the marginal
    threshold under-covers the hardest class of this pool, which is what the per-class check has to catch."""
    logits, labels = _pool()
    scores = class_scores(logits, score, generator=torch.Generator().manual_seed(3))
    true = scores.gather(1, labels.unsqueeze(1)).squeeze(1)
    n_cal, alpha, splits = 1000, 0.1, 200
    g = torch.Generator().manual_seed(4)
    mondrian, marginal = [], []
    for _ in range(splits):
        perm = torch.randperm(len(labels), generator=g)
        cal, test = perm[:n_cal], perm[n_cal:]
        per_class = classwise_thresholds(true[cal], labels[cal], K, alpha)
        mondrian.append(classwise_coverage(prediction_sets(scores[test], per_class), labels[test]))
        marginal.append(classwise_coverage(prediction_sets(scores[test], conformal_threshold(true[cal], alpha)),
                                           labels[test]))
    for covs, covered in ((torch.stack(mondrian), True), (torch.stack(marginal), False)):
        mean, tol = covs.mean(dim=0), 4 * covs.std(dim=0) / math.sqrt(splits)  # per class
        assert bool((mean >= 1 - alpha - tol).all()) is covered, mean


def test_scores_against_a_numpy_rederivation():
    logits, labels = _pool(n=300)
    p = logits.double().softmax(dim=1).numpy()
    y = labels.numpy()
    order = np.argsort(-p, axis=1)
    rank = np.argsort(order, axis=1) + 1  # 1 for the most likely class
    cum = np.take_along_axis(np.cumsum(np.take_along_axis(p, order, axis=1), axis=1), rank - 1, axis=1)
    aps = cum[np.arange(len(y)), y]
    raps = aps + 0.05 * np.maximum(0, rank[np.arange(len(y)), y] - 2)
    np.testing.assert_allclose(label_scores(logits, labels, "lac").numpy(), 1 - p[np.arange(len(y)), y], atol=1e-12)
    np.testing.assert_allclose(label_scores(logits, labels, "aps", randomized=False).numpy(), aps, atol=1e-12)
    np.testing.assert_allclose(label_scores(logits, labels, "raps", randomized=False, lam=0.05, k_reg=2).numpy(),
                               raps, atol=1e-12)
    # randomised: U * p[y] is subtracted, one U ~ Uniform(0, 1) per image, reproducible from the generator
    rand = label_scores(logits, labels, "aps", generator=torch.Generator().manual_seed(5)).numpy()
    u = (aps - rand) / p[np.arange(len(y)), y]
    assert u.min() >= 0 and u.max() <= 1 and abs(u.mean() - 0.5) < 0.1
    again = class_scores(logits, "aps", generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(again[torch.arange(len(y)), labels].numpy(), rand)


def test_threshold_is_the_corrected_order_statistic():
    scores = torch.arange(1, 21, dtype=torch.float64)[torch.randperm(20, generator=torch.Generator().manual_seed(0))]
    assert conformal_threshold(scores, 0.1) == 19  # ceil(21 * 0.9) = 19th smallest
    assert conformal_threshold(scores, 0.05) == 20
    assert conformal_threshold(scores[:9], 0.1) == scores[:9].max()  # n = 9 = ceil(1/alpha) - 1: the largest
    rng = np.random.default_rng(0)
    for n in (10, 99, 500):
        x = rng.random(n)
        for alpha in (0.2, 0.1, 0.05):
            if math.ceil((n + 1) * (1 - alpha)) <= n:
                level = math.ceil((n + 1) * (1 - alpha)) / n
                assert conformal_threshold(torch.from_numpy(x), alpha) == np.quantile(x, level, method="inverted_cdf")


def test_lac_and_aps_agree_with_mapie():
    """MAPIE 1.6 (SplitConformalClassifier on prefit probabilities) against ours, on the same probabilities.

    LAC: scores, thresholds for several alphas and the prediction sets agree. APS: MAPIE's score is always
    randomised, with U from numpy's RandomState(random_state); ours draws U from a torch generator, so the score
    definitions are compared by removing MAPIE's U (re-drawn from the same RandomState) from our non-randomised
    score, and the thresholds by calibrating ours on MAPIE's own score vector. APS sets are not compared: MAPIE
    builds them by its include_last_label rule, not as {y : score <= threshold}. RAPS is not compared: MAPIE tunes
    k_reg and lambda on a split of the calibration set, where ours takes them fixed."""
    classification = pytest.importorskip("mapie.classification")
    from sklearn.base import BaseEstimator, ClassifierMixin  # a dependency of MAPIE

    class Identity(ClassifierMixin, BaseEstimator):
        """A fitted classifier whose features are already its class probabilities."""

        classes_ = np.arange(K)

        def predict_proba(self, X):
            return np.asarray(X)

        def predict(self, X):
            return np.asarray(X).argmax(axis=1)

    logits, labels = _pool(n=1500)
    probs = logits.double().softmax(dim=1).numpy()
    n_cal, alphas, seed = 500, (0.2, 0.1, 0.05, 0.01), 7
    cal_logits, cal_labels = logits[:n_cal], labels[:n_cal]
    for score in ("lac", "aps"):
        mapie = classification.SplitConformalClassifier(Identity(), confidence_level=[1 - a for a in alphas],
                                                        conformity_score=score, prefit=True, random_state=seed)
        mapie.conformalize(probs[:n_cal], labels[:n_cal].numpy())
        _, theirs_sets = mapie.predict_set(probs[n_cal:])
        theirs = mapie.conformity_scores.ravel()
        if score == "lac":
            ours = label_scores(cal_logits, cal_labels, "lac")
            np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-12)
        else:
            u = np.random.RandomState(seed).uniform(size=n_cal)
            p_label = probs[np.arange(n_cal), cal_labels.numpy()]
            ours = label_scores(cal_logits, cal_labels, "aps", randomized=False).numpy() - u * p_label
            np.testing.assert_allclose(ours, theirs, atol=1e-12)
            ours = torch.from_numpy(theirs)
        thresholds = [conformal_threshold(ours, a) for a in alphas]
        np.testing.assert_allclose(thresholds, mapie._mapie_classifier.quantiles_, atol=1e-12)
        if score == "lac":
            test_scores = class_scores(logits[n_cal:], "lac")
            for i, threshold in enumerate(thresholds):
                np.testing.assert_array_equal(prediction_sets(test_scores, threshold).numpy(), theirs_sets[:, :, i])


def test_report_calibrates_on_val_and_only_evaluates_test():
    logits, labels = _pool()
    val, test = slice(0, 1000), slice(1000, None)
    report = conformal_report(logits[val], labels[val], logits[test], labels[test], alphas=(0.2, 0.1),
                              class_conditional=True, seed=3)
    assert set(report) == {"lac", "aps", "raps"} and set(report["aps"]) == {0.2, 0.1}
    entry = report["aps"][0.1]
    cal = label_scores(logits[val], labels[val], "aps", generator=torch.Generator().manual_seed(3))
    assert entry["threshold"] == conformal_threshold(cal, 0.1)
    assert 0.85 < entry["coverage"] < 0.95 and 1 <= entry["mean_set_size"] <= K
    assert entry["min_class_coverage"] < entry["classwise"]["min_class_coverage"]
    assert len(entry["classwise"]["thresholds"]) == K
    # the test labels feed only the measures, never the thresholds
    shuffled = conformal_report(logits[val], labels[val], logits[test], labels[test].flip(0), alphas=(0.2, 0.1),
                                class_conditional=True, seed=3)
    assert shuffled["aps"][0.1]["threshold"] == entry["threshold"]
    assert shuffled["aps"][0.1]["classwise"]["thresholds"] == entry["classwise"]["thresholds"]
    assert shuffled["aps"][0.1]["coverage"] < 0.5
    sets = prediction_sets(class_scores(logits[test], "lac"), report["lac"][0.1]["threshold"])
    assert report["lac"][0.1]["mean_set_size"] == mean_set_size(sets)


@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.1])
def test_alpha_outside_the_open_unit_interval_is_refused(alpha):
    with pytest.raises(ValueError, match=rf"\(0, 1\), got {alpha}"):
        conformal_threshold(torch.rand(100), alpha)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        classwise_thresholds(torch.rand(100), torch.zeros(100, dtype=torch.long), K, alpha)


def test_calibration_set_too_small_for_alpha_is_refused():
    with pytest.raises(ValueError, match=r"calibration set of 8 images .* alpha=0.1 needs \(at least .* = 9"):
        conformal_threshold(torch.rand(8), 0.1)
    with pytest.raises(ValueError, match=r"calibration set of 0 images"):
        conformal_threshold(torch.rand(0), 0.5)
    labels = torch.tensor([0] * 20 + [1] * 20 + [2] * 3)
    with pytest.raises(ValueError, match=r"class 2 has 3 calibration images.*at least ceil\(1/alpha\)-1 = 9"):
        classwise_thresholds(torch.rand(43), labels, 3, 0.1)
    with pytest.raises(ValueError, match=r"class 3 has 0 calibration images"):
        classwise_thresholds(torch.rand(43), labels, 4, 0.5)


def test_mismatched_or_out_of_range_labels_are_refused():
    logits = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"one label per row: logits have 5 rows, labels shape \(4,\)"):
        label_scores(logits, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"one label per row"):
        conformal_report(logits, torch.zeros(5, dtype=torch.long), logits, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"one label per row: sets have 5 rows"):
        coverage(torch.ones(5, 3, dtype=torch.bool), torch.zeros(3, dtype=torch.long))
    for bad in (3, -1):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            label_scores(logits, torch.tensor([0, 1, 2, 0, bad]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        classwise_thresholds(torch.rand(5), torch.tensor([0, 1, 2, 0, 3]), 3, 0.5)
    with pytest.raises(ValueError, match=r"expected logits \(N, C\)"):
        class_scores(torch.randn(5))
    with pytest.raises(ValueError, match=r"expected one of \('lac', 'aps', 'raps'\)"):
        class_scores(logits, "thr")
    with pytest.raises(ValueError, match=r"one threshold or one per class \(3,\)"):
        prediction_sets(class_scores(logits), torch.zeros(4))
