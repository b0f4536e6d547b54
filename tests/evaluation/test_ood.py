"""OOD scores and metrics: AUROC, FPR@95 and the ROC curve against scikit-learn, Mahalanobis against a direct numpy
computation, deep kNN against scikit-learn's brute-force neighbours, and the error cases."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from sklearn.neighbors import NearestNeighbors

from vitkit.evaluation.ood import (
    auroc,
    energy,
    fit_mahalanobis,
    fpr_at_tpr,
    knn_score,
    mahalanobis_score,
    max_logit,
    msp,
    ood_report,
    roc_curve,
)


def _sklearn(scores_in, scores_out, tpr):
    truth = np.r_[np.ones(len(scores_in)), np.zeros(len(scores_out))]
    scores = np.r_[scores_in.numpy(), scores_out.numpy()]
    fpr_curve, tpr_curve, _ = sk_roc_curve(truth, scores, drop_intermediate=False)
    return roc_auc_score(truth, scores), fpr_curve[np.searchsorted(tpr_curve, tpr)], fpr_curve, tpr_curve


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sizes", [(400, 300), (37, 500), (100, 1)])
def test_metrics_equal_sklearn(ties, sizes):
    g = torch.Generator().manual_seed(sizes[0] + ties)
    scores_in, scores_out = torch.randn(sizes[0], generator=g) + 1, torch.randn(sizes[1], generator=g)
    if ties:  # few distinct values, many shared between the sets
        scores_in, scores_out = (scores_in * 3).round(), (scores_out * 3).round()
    for tpr in (0.95, 0.5, 1.0):
        expected_auroc, expected_fpr, fpr_curve, tpr_curve = _sklearn(scores_in, scores_out, tpr)
        assert auroc(scores_in, scores_out) == pytest.approx(expected_auroc, abs=1e-6)
        assert fpr_at_tpr(scores_in, scores_out, tpr) == pytest.approx(expected_fpr, abs=1e-6), tpr
    ours_fpr, ours_tpr = roc_curve(scores_in, scores_out)
    np.testing.assert_allclose(ours_fpr.numpy(), fpr_curve, atol=1e-12)
    np.testing.assert_allclose(ours_tpr.numpy(), tpr_curve, atol=1e-12)


def test_separated_swapped_and_identical_scores():
    low, high = torch.arange(100.0), torch.arange(100.0) + 1000
    assert auroc(high, low) == 1.0 and fpr_at_tpr(high, low) == 0.0
    assert auroc(low, high) == 0.0 and fpr_at_tpr(low, high) == 1.0
    same = torch.zeros(50)
    assert auroc(same, torch.zeros(20)) == 0.5 and fpr_at_tpr(same, torch.zeros(20)) == 1.0


def test_fpr_at_tpr_threshold_convention():
    # 20 in-distribution scores 1..20: accepting 95% (19 of them) puts the threshold at 2, and scores >= 2 pass.
    scores_in = torch.arange(1.0, 21.0)
    assert fpr_at_tpr(scores_in, torch.tensor([1.9, 2.0, 2.1, 0.0])) == 0.5
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0])) == pytest.approx((1.0 + 0.5 + 1 + 1) / 4)


def test_logit_scores():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 10, generator=g) * 4
    torch.testing.assert_close(energy(logits), torch.logsumexp(logits.double(), dim=1))
    torch.testing.assert_close(energy(logits, temperature=2.5), 2.5 * torch.logsumexp(logits.double() / 2.5, dim=1))
    torch.testing.assert_close(max_logit(logits), logits.double().max(dim=1).values)
    confidence = msp(logits)
    assert confidence.dtype == torch.float64
    assert (confidence >= 1 / 10).all() and (confidence <= 1).all()
    assert msp(torch.zeros(3, 4)).tolist() == [0.25] * 3
    # float64 keeps confident predictions apart that float32 would tie at exactly 1.0
    assert len(msp(torch.tensor([[20.0, 0.0], [25.0, 0.0]])).unique()) == 2


def _gaussian_classes(n_per_class, dim, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(3, dim, generator=torch.Generator().manual_seed(7))
    mixing = torch.randn(dim, dim, generator=torch.Generator().manual_seed(8)) / dim**0.5  # correlated noise
    labels = torch.arange(3).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=g) @ mixing + shift, labels


def test_mahalanobis_equals_numpy():
    features, labels = _gaussian_classes(20, dim=5, seed=0)
    queries = torch.randn(30, 5, generator=torch.Generator().manual_seed(1)) * 3
    x, y = features.double().numpy(), labels.numpy()
    means = np.stack([x[y == c].mean(axis=0) for c in range(3)])
    centred = x - means[y]
    precision = np.linalg.pinv(centred.T @ centred / len(x))
    q = queries.double().numpy()
    distances = np.stack([np.einsum("nd,de,ne->n", q - m, precision, q - m) for m in means], axis=1)

    stats = fit_mahalanobis(features, labels)
    np.testing.assert_allclose(stats.means.numpy(), means, rtol=1e-10)
    np.testing.assert_allclose(stats.precision.numpy(), precision, rtol=1e-8)
    np.testing.assert_allclose(mahalanobis_score(stats, queries).numpy(), -distances.min(axis=1), rtol=1e-8)
    np.testing.assert_allclose(mahalanobis_score(stats, queries, chunk=7).numpy(), -distances.min(axis=1), rtol=1e-8)
    assert len(mahalanobis_score(stats, torch.zeros(0, 5))) == 0


def test_mahalanobis_separates_shifted_cluster():
    train, labels = _gaussian_classes(200, dim=16, seed=0)
    test_in, _ = _gaussian_classes(100, dim=16, seed=1)
    test_out, _ = _gaussian_classes(100, dim=16, seed=2, shift=3.0)
    stats = fit_mahalanobis(train, labels, chunk=100)
    assert auroc(mahalanobis_score(stats, test_in), mahalanobis_score(stats, test_out)) > 0.95


def test_knn_score_equals_sklearn():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(300, 16, generator=g), torch.randn(40, 16, generator=g) + 0.3
    unit = lambda t: (t / t.norm(dim=1, keepdim=True)).numpy()
    distances, _ = NearestNeighbors(n_neighbors=50, algorithm="brute").fit(unit(bank)).kneighbors(unit(queries))
    for k in (1, 7, 50):
        np.testing.assert_allclose(knn_score(bank, queries, k=k, chunk=16).numpy(), -distances[:, k - 1], atol=1e-5)
    torch.testing.assert_close(knn_score(bank, queries), knn_score(bank, queries, chunk=3))
    # a query equal to a bank row keeps that row as its nearest neighbour: queries are not the bank
    assert knn_score(bank, bank[:5] * 2, k=1).abs().max() < 1e-3


def test_ood_report():
    in_scores = {"msp": torch.arange(10.0) + 10, "energy": torch.arange(10.0)}
    out_scores = {"svhn": {"msp": torch.arange(10.0), "energy": torch.arange(10.0) + 10}}
    report = ood_report(in_scores, out_scores)
    assert report == {"msp": {"svhn": {"auroc": 1.0, "fpr95": 0.0}}, "energy": {"svhn": {"auroc": 0.0, "fpr95": 1.0}}}


ONE = torch.ones(3)
BANK = torch.randn(10, 4)
TRAIN = torch.randn(12, 4)
TRAIN_LABELS = torch.tensor([0, 1, 2] * 4)


@pytest.mark.parametrize("call, parts", [
    (lambda: auroc(torch.zeros(0), ONE), ["scores_in", "empty"]),
    (lambda: fpr_at_tpr(ONE, torch.zeros(0)), ["scores_out", "empty"]),
    (lambda: auroc(ONE, torch.tensor([0.0, float("nan")])), ["scores_out", "1 NaN"]),
    (lambda: roc_curve(torch.ones(2, 2), ONE), ["scores_in", "1-D", "(2, 2)"]),
    (lambda: fpr_at_tpr(ONE, ONE, tpr=0.0), ["tpr", "(0, 1]"]),
    (lambda: msp(torch.ones(5)), ["(N, C)", "(5,)"]),
    (lambda: energy(torch.ones(2, 3), temperature=0), ["temperature", "> 0"]),
    (lambda: knn_score(BANK, torch.randn(3, 5)), ["4-dim", "5", "expected equal"]),
    (lambda: knn_score(BANK, BANK), ["k=50", "larger than the feature bank", "10 rows"]),
    (lambda: knn_score(BANK, BANK, k=0), ["k must be >= 1"]),
    (lambda: fit_mahalanobis(TRAIN, TRAIN_LABELS[:5]), ["12 rows", "(5,)", "expected (12,)"]),
    (lambda: fit_mahalanobis(TRAIN, torch.tensor([0, 1, 3] * 4)), ["class 2 has no training samples", "[0, 4)"]),
    (lambda: fit_mahalanobis(TRAIN, TRAIN_LABELS, num_classes=5), ["class 3", "[3, 4]"]),
    (lambda: fit_mahalanobis(TRAIN, TRAIN_LABELS, num_classes=2), ["labels must lie in [0, 2)", "[0, 2]"]),
    (lambda: fit_mahalanobis(TRAIN[:3], TRAIN_LABELS[:3]), ["more samples than classes", "3 samples"]),
    (lambda: fit_mahalanobis(torch.full((12, 4), float("nan")), TRAIN_LABELS), ["NaN or inf"]),
    (lambda: mahalanobis_score(fit_mahalanobis(TRAIN, TRAIN_LABELS), BANK[:, :3]), ["(Q, 4)", "(10, 3)"]),
    (lambda: ood_report({"msp": ONE}, {"svhn": {"energy": ONE}}), ["'svhn'", "['energy']", "['msp']"]),
])
def test_bad_input(call, parts):
    with pytest.raises(ValueError) as error:
        call()
    for part in parts:
        assert part in str(error.value)
