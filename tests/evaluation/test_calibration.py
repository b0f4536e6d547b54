"""Calibration metrics against a second implementation (torchmetrics, in the dev extras) on the same logits, and
temperature scaling: fitted on validation only, it lowers the NLL of over-confident logits."""

import math

import pytest
import torch
import torch.nn.functional as F

from vitkit.evaluation.calibration import (
    brier,
    calibration_report,
    classwise_ece,
    ece,
    fit_temperature,
    mce,
    nll,
    reliability,
)


def _logits(n=3000, classes=10, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += 1.5  # informative, and over-confident once scaled
    return logits * scale, labels


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_ece_and_mce_equal_torchmetrics(scale):
    from torchmetrics.functional.classification import multiclass_calibration_error  # vitkit[dev]

    logits, labels = _logits(scale=scale)
    probs = logits.softmax(dim=1)
    for norm, ours in (("l1", ece(logits, labels)), ("max", mce(logits, labels))):
        theirs = multiclass_calibration_error(probs, labels, num_classes=10, n_bins=15, norm=norm).item()
        assert ours == pytest.approx(theirs, abs=1e-5), norm


def test_nll_brier_and_classwise_against_direct_formulas():
    logits, labels = _logits()
    probs = logits.double().softmax(dim=1)
    assert nll(logits, labels) == pytest.approx(F.nll_loss(probs.log(), labels).item(), rel=1e-9)
    onehot = F.one_hot(labels, 10).double()
    assert brier(logits, labels) == pytest.approx(((probs - onehot) ** 2).sum(1).mean().item(), rel=1e-9)
    # classwise ECE by hand: each class's probability against "is this class", 15 bins of (0, 1]
    total = 0.0
    for c in range(10):
        p, hit = probs[:, c], (labels == c).double()
        for b in range(15):
            low, high = b / 15, (b + 1) / 15
            inside = (p > low) & (p <= high) if b else (p <= high)
            if inside.any():
                total += inside.double().mean().item() * abs(hit[inside].mean().item() - p[inside].mean().item())
    assert classwise_ece(logits, labels) == pytest.approx(total / 10, abs=1e-9)


def test_perfectly_calibrated_and_reliability_bins():
    g = torch.Generator().manual_seed(1)
    confidence = torch.rand(200_000, generator=g) * 0.5 + 0.5
    correct = torch.rand(200_000, generator=g) < confidence  # right with exactly the stated probability
    logits = torch.stack([confidence.log(), (1 - confidence).log()], 1)
    labels = torch.where(correct, 0, 1)
    assert ece(logits, labels) < 0.005
    bins = reliability(logits, labels)
    assert len(bins["confidence"]) == 15 and sum(bins["share"]) == pytest.approx(1.0)
    assert all(s == 0 for s in bins["share"][:7])  # confidences above 0.5 only


def test_temperature_scaling_fits_on_val_and_helps_test():
    val_logits, val_labels = _logits(seed=1)
    test_logits, test_labels = _logits(seed=2)
    t = fit_temperature(val_logits, val_labels)
    assert t > 1.5  # over-confident logits are softened
    before, after = calibration_report(test_logits, test_labels), calibration_report(test_logits / t, test_labels)
    assert after.nll < before.nll and after.ece < before.ece
    assert after.accuracy == before.accuracy  # a temperature never changes the argmax
    # the fitted T minimises the validation NLL: nudging it either way does not help
    for factor in (0.9, 1.1):
        assert nll(val_logits / (t * factor), val_labels) >= nll(val_logits / t, val_labels) - 1e-9
    assert math.isfinite(t)


def test_bad_input_is_named():
    logits, labels = _logits(n=10)
    with pytest.raises(ValueError, match="fitting it on 'test' would tune on the numbers it reports"):
        fit_temperature(logits, labels, split="test")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        ece(logits, labels + 10)
    with pytest.raises(ValueError, match="one label per row"):
        ece(logits, labels[:5])
