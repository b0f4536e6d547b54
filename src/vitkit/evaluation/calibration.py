"""Calibration of a classifier's probabilities, with the binning pinned so numbers compare across papers and
runs: expected calibration error over 15 equal-width confidence bins (L1), its classwise and maximum
variants, negative log-likelihood and the Brier score; temperature scaling fitted on a validation split.

Pure functions on logits and labels (tensors); the trust report and its tests call them."""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

BINS = 15


def _check(logits: Tensor, labels: Tensor) -> None:
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"expected logits (N, C) with C >= 2 classes, got shape {tuple(logits.shape)}")
    if labels.shape != (len(logits),):
        raise ValueError(f"expected one label per row: logits have {len(logits)} rows, labels shape "
                         f"{tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got [{labels.min()}, {labels.max()}]")


def _binned_gaps(confidence: Tensor, correct: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """(|accuracy - confidence| per bin, fraction of samples per bin) over equal-width bins of (0, 1]; a
    confidence of exactly b/bins falls in the bin it closes, as torchmetrics and Guo et al. bin it."""
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    count = torch.zeros(bins, dtype=torch.float64).scatter_add_(0, index, torch.ones_like(confidence,
                                                                                            dtype=torch.float64))
    conf_sum = torch.zeros(bins, dtype=torch.float64).scatter_add_(0, index, confidence.double())
    acc_sum = torch.zeros(bins, dtype=torch.float64).scatter_add_(0, index, correct.double())
    safe = count.clamp_min(1)
    return (acc_sum / safe - conf_sum / safe).abs(), count / max(len(confidence), 1)


def ece(logits: Tensor, labels: Tensor, bins: int = BINS) -> float:
    """Expected calibration error (top-label, L1, equal-width bins)."""
    _check(logits, labels)
    probs = logits.double().softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    gaps, weight = _binned_gaps(confidence, predicted == labels, bins)
    return float((gaps * weight).sum())


def mce(logits: Tensor, labels: Tensor, bins: int = BINS) -> float:
    """Maximum calibration error: the largest gap of a non-empty bin."""
    _check(logits, labels)
    confidence, predicted = logits.double().softmax(dim=1).max(dim=1)
    gaps, weight = _binned_gaps(confidence, predicted == labels, bins)
    return float(gaps[weight > 0].max()) if len(labels) else 0.0


def classwise_ece(logits: Tensor, labels: Tensor, bins: int = BINS) -> float:
    """Mean over classes of the ECE of each class's probability against the event "the label is this class"
    (Kull et al., 2019)."""
    _check(logits, labels)
    probs = logits.double().softmax(dim=1)
    total = 0.0
    for c in range(probs.shape[1]):
        gaps, weight = _binned_gaps(probs[:, c], labels == c, bins)
        total += float((gaps * weight).sum())
    return total / probs.shape[1]


def nll(logits: Tensor, labels: Tensor) -> float:
    _check(logits, labels)
    return float(F.cross_entropy(logits.double(), labels))


def brier(logits: Tensor, labels: Tensor) -> float:
    """Mean over samples of the squared L2 distance between the probabilities and the one-hot label."""
    _check(logits, labels)
    probs = logits.double().softmax(dim=1)
    return float(((probs - F.one_hot(labels, probs.shape[1]).double()) ** 2).sum(dim=1).mean())


@dataclass
class CalibrationReport:
    ece: float
    classwise_ece: float
    mce: float
    nll: float
    brier: float
    accuracy: float

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_report(logits: Tensor, labels: Tensor, bins: int = BINS) -> CalibrationReport:
    accuracy = float((logits.argmax(dim=1) == labels).double().mean()) if len(labels) else 0.0
    return CalibrationReport(ece(logits, labels, bins), classwise_ece(logits, labels, bins), mce(logits, labels, bins),
                             nll(logits, labels), brier(logits, labels), accuracy)


def reliability(logits: Tensor, labels: Tensor, bins: int = BINS) -> dict[str, list[float]]:
    """Per bin: mean confidence, accuracy and share of samples (for the reliability diagram)."""
    _check(logits, labels)
    confidence, predicted = logits.double().softmax(dim=1).max(dim=1)
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(index, minlength=bins).double()
    safe = count.clamp_min(1)
    conf = torch.zeros(bins, dtype=torch.float64).scatter_add_(0, index, confidence) / safe
    acc = torch.zeros(bins, dtype=torch.float64).scatter_add_(0, index, (predicted == labels).double()) / safe
    return {"confidence": conf.tolist(), "accuracy": acc.tolist(), "share": (count / max(len(labels), 1)).tolist()}


def fit_temperature(val_logits: Tensor, val_labels: Tensor, split: str = "val", max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the validation NLL of logits / T (Guo et al., 2017). `split` names
    where the logits come from: fitting on the test split would select on it and is refused."""
    if split == "test":
        raise ValueError("temperature scaling is fitted on the validation split; fitting it on 'test' would tune "
                         "on the numbers it reports (expected split='val')")
    _check(val_logits, val_labels)
    if len(val_labels) == 0:
        raise ValueError("temperature scaling needs validation logits, got none")
    logits = val_logits.detach().double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), val_labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())
