"""Linear probes on frozen features: how DINOv2, MAE and CLIP report what a backbone learned.

- `linear_probe_grid`: one linear head per (feature set, learning rate), all trained in the same pass over the same
  mini-batches with SGD (momentum 0.9) and a cosine schedule; validation picks the best (DINOv2's eval/linear.py).
  `batchnorm=True` puts a BatchNorm without affine parameters before each head (MAE's linear probe).
- `logistic_regression_sweep`: full-batch L-BFGS logistic regression over a range of L2 strengths (the CLIP paper's
  protocol), with scikit-learn's LogisticRegression objective so that the numbers compare.

In both, the test split is evaluated once, for the selected model only: a test number that is the maximum over the
grid would be optimistic. Pure functions on tensors; `vitkit probe` uses them."""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MOMENTUM = 0.9
INIT_STD = 0.01          # DINOv2's head initialisation: normal(0, 0.01) weights, zero bias
BN_MOMENTUM, BN_EPS = 0.1, 1e-5
EVAL_CHUNK = 4096


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass
class LinearProbeResult:
    selected: tuple[str, float]      # (feature set name, learning rate) chosen on validation
    val_top1: dict[str, float]       # f"{name}@lr={lr:g}" -> validation top-1 of every head
    test_top1: float                 # test top-1 of the selected head only; nan when there is no test split
    epochs: int

    def to_dict(self) -> dict:
        """JSON-ready: `selected` as [name, lr]; a missing test number is None rather than NaN, which strict JSON
        cannot hold."""
        return {"selected": list(self.selected), "val_top1": dict(self.val_top1),
                "test_top1": _json_float(self.test_top1), "epochs": self.epochs}


@dataclass
class LogisticResult:
    selected_C: float                # chosen on validation (scikit-learn's inverse L2 strength)
    val_top1: dict[float, float]     # C -> validation top-1, in increasing C
    test_top1: float                 # test top-1 at selected_C only; nan when there is no test split

    def to_dict(self) -> dict:
        return {"selected_C": self.selected_C, "val_top1": {f"{c:g}": acc for c, acc in self.val_top1.items()},
                "test_top1": _json_float(self.test_top1)}


def _check_features(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.dtype.is_floating_point:
        got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must be a 2-D float tensor (N, D), got {got}")


def _check_labels(labels: torch.Tensor, rows: int, num_classes: int, split: str) -> torch.Tensor:
    """Integer class indices in [0, num_classes), one per feature row; returned as int64."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        got = f"shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{split} labels must be a 1-D tensor of class indices, got {got}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{split} labels must be integer class indices (int64), got dtype {labels.dtype}")
    if len(labels) != rows:
        raise ValueError(f"{split} has {rows} feature rows but {len(labels)} labels; expected one label per row")
    if len(labels):
        low, high = labels.min().item(), labels.max().item()
        if low < 0 or high >= num_classes:
            raise ValueError(f"{split} label {low if low < 0 else high} is outside [0, {num_classes}) "
                             f"(num_classes={num_classes})")
    return labels.long()


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")


def _check_test_pair(test, test_labels) -> None:
    if (test is None) != (test_labels is None):
        raise ValueError("test and test_labels go together: pass both, or neither to skip the test split")


# ----------------------------------------------------------------------------------------------------------------
# Linear-probe grid (SGD, all heads in one pass)
# ----------------------------------------------------------------------------------------------------------------

def _check_feature_sets(train: dict, val: dict, test: dict | None) -> list[str]:
    """The feature-set names (train's order) after checking every split has the same sets with matching widths."""
    if not isinstance(train, dict) or not train:
        raise ValueError("train must be a non-empty dict {feature set name: (N, D) tensor}")
    names = list(train)
    for split, sets in (("val", val), ("test", test)):
        if sets is None:
            continue
        if not isinstance(sets, dict):
            raise ValueError(f"{split} must be a dict {{feature set name: (N, D) tensor}}, got {type(sets).__name__}")
        if set(sets) != set(train):
            only_train = sorted(set(train) - set(sets))
            only_split = sorted(set(sets) - set(train))
            raise ValueError(f"feature set names differ between train and {split}: only in train {only_train}, "
                             f"only in {split} {only_split}; expected the same names in every split")
    for name in names:
        for split, sets in (("train", train), ("val", val), ("test", test)):
            if sets is not None:
                _check_features(sets[name], f"{split} feature set {name!r}")
                if sets[name].shape[1] != train[name].shape[1]:
                    raise ValueError(f"{split} feature set {name!r} has {sets[name].shape[1]} dims but train has "
                                     f"{train[name].shape[1]}; expected the same width in every split")
    return names


def _check_rows(sets: dict, names: list[str], labels: torch.Tensor, num_classes: int, split: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{split}_labels must be a tensor of class indices, got {type(labels).__name__}")
    for name in names:
        if len(sets[name]) != len(labels):
            raise ValueError(f"{split} feature set {name!r} has {len(sets[name])} rows but {split}_labels has "
                             f"{len(labels)}; expected one label per row")
    return _check_labels(labels, len(labels), num_classes, split)


class _Heads:
    """The len(lrs) linear heads of one feature set as one weight (D, L, C): a batch goes through all of them in a
    single matrix product, and their gradients come back from another one."""

    def __init__(self, dim: int, num_heads: int, num_classes: int, generator: torch.Generator,
                 device: torch.device, batchnorm: bool):
        # every head of a feature set starts from the same weights, so that the learning rate is all that differs
        init = torch.randn(dim, 1, num_classes, generator=generator) * INIT_STD
        self.weight = init.repeat(1, num_heads, 1).to(device)
        self.bias = torch.zeros(num_heads, num_classes, device=device)
        self.weight_buf, self.bias_buf = torch.zeros_like(self.weight), torch.zeros_like(self.bias)
        # one BatchNorm serves every head: without affine parameters, its statistics do not depend on the head
        self.running = (torch.zeros(dim, device=device), torch.ones(dim, device=device)) if batchnorm else None

    def normalise(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if self.running is None:
            return x
        return F.batch_norm(x, *self.running, training=training, momentum=BN_MOMENTUM, eps=BN_EPS)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) logits of every head for the already normalised batch x (B, D)."""
        dim, heads, classes = self.weight.shape
        return (x @ self.weight.view(dim, heads * classes)).view(len(x), heads, classes) + self.bias

    def step(self, x: torch.Tensor, y: torch.Tensor, lrs: torch.Tensor, weight_decay: float) -> None:
        """One SGD-with-momentum step of every head on the mean cross-entropy of the batch, each at its own lr
        (lrs, (L,), already multiplied by the schedule). The gradient of softmax cross-entropy through a linear
        layer is closed-form, so no autograd graph is built."""
        x = self.normalise(x, training=True)
        grad = self.logits(x).softmax(dim=-1)                  # (B, L, C)
        grad[torch.arange(len(x), device=x.device), :, y] -= 1.0
        grad /= len(x)
        dim, heads, classes = self.weight.shape
        grad_weight = (x.T @ grad.view(len(x), heads * classes)).view(dim, heads, classes)
        if weight_decay:
            grad_weight += weight_decay * self.weight
        self.weight_buf.mul_(MOMENTUM).add_(grad_weight)
        self.bias_buf.mul_(MOMENTUM).add_(grad.sum(dim=0))
        self.weight.addcmul_(self.weight_buf, lrs.view(1, heads, 1), value=-1.0)
        self.bias.addcmul_(self.bias_buf, lrs.view(heads, 1), value=-1.0)

    @torch.no_grad()
    def correct(self, features: torch.Tensor, labels: torch.Tensor, head: int | None = None) -> torch.Tensor:
        """Correct-prediction counts (L,) of every head, or of `head` alone (1,); a head whose logits are not finite
        (diverged at a too-large lr) counts as wrong rather than voting for whichever class NaN lands on."""
        counts = torch.zeros(1 if head is not None else self.weight.shape[1], dtype=torch.long,
                             device=self.weight.device)
        for start in range(0, len(features), EVAL_CHUNK):
            x = self.normalise(features[start:start + EVAL_CHUNK].to(self.weight.device).float(), training=False)
            y = labels[start:start + EVAL_CHUNK].to(self.weight.device)
            if head is None:
                logits = self.logits(x)
            else:
                logits = (x @ self.weight[:, head] + self.bias[head]).unsqueeze(1)
            hit = (logits.argmax(dim=-1) == y[:, None]) & logits.isfinite().all(dim=-1)
            counts += hit.sum(dim=0)
        return counts


@torch.no_grad()
def linear_probe_grid(train: dict[str, torch.Tensor], train_labels: torch.Tensor,
                      val: dict[str, torch.Tensor], val_labels: torch.Tensor,
                      test: dict[str, torch.Tensor] | None, test_labels: torch.Tensor | None, num_classes: int,
                      lrs: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1), epochs: int = 10,
                      batch_size: int = 256, batchnorm: bool = False, weight_decay: float = 0.0,
                      seed: int = 0) -> LinearProbeResult:
    """Train a linear head for every (feature set, lr) pair on the same shuffled mini-batches, pick the best on
    validation (ties: the smaller lr, then the earlier feature set) and report its test top-1.

    Features are used as given (cast to float32, not standardised). An epoch is ceil(N / batch_size) near-equal
    batches, so no batch is a stray single sample that BatchNorm could not normalise. Weight decay, if any, applies
    to the weights, not the biases."""
    _check_num_classes(num_classes)
    lrs = [float(lr) for lr in lrs]
    if not lrs or any(not lr > 0 for lr in lrs) or len({f"{lr:g}" for lr in lrs}) != len(lrs):
        raise ValueError(f"lrs must be distinct positive learning rates (as printed with :g), got {lrs}")
    if epochs < 1 or batch_size < 1 or weight_decay < 0:
        raise ValueError(f"linear probe needs epochs >= 1, batch_size >= 1 and weight_decay >= 0, got "
                         f"epochs={epochs}, batch_size={batch_size}, weight_decay={weight_decay}")
    _check_test_pair(test, test_labels)
    names = _check_feature_sets(train, val, test)
    train_labels = _check_rows(train, names, train_labels, num_classes, "train")
    val_labels = _check_rows(val, names, val_labels, num_classes, "val")
    if test is not None:
        test_labels = _check_rows(test, names, test_labels, num_classes, "test")
    if len(train_labels) == 0:
        raise ValueError("train split is empty; expected at least one training row")
    if len(val_labels) == 0:
        raise ValueError("val split is empty; expected validation rows to select a head on")

    device = train[names[0]].device
    generator = torch.Generator().manual_seed(seed)
    heads = {name: _Heads(train[name].shape[1], len(lrs), num_classes, generator, device, batchnorm) for name in names}
    head_lrs = torch.tensor(lrs, dtype=torch.float32, device=device)
    rows = len(train_labels)
    steps = math.ceil(rows / batch_size)
    if batchnorm and rows // steps < 2:
        raise ValueError(f"batchnorm needs at least 2 samples per batch, got {rows} training rows with "
                         f"batch_size={batch_size}")
    train_labels = train_labels.to(device)
    total, t = epochs * steps, 0
    for _ in range(epochs):
        order = torch.randperm(rows, generator=generator).to(device)
        for index in order.tensor_split(steps):
            lr_now = head_lrs * (0.5 * (1.0 + math.cos(math.pi * t / total)))
            y = train_labels[index]
            for name in names:
                heads[name].step(train[name][index].float(), y, lr_now, weight_decay)
            t += 1

    val_correct = {name: heads[name].correct(val[name], val_labels).tolist() for name in names}
    val_top1 = {f"{name}@lr={lr:g}": val_correct[name][i] / len(val_labels)
                for name in names for i, lr in enumerate(lrs)}
    # integer counts, so that equal accuracies tie exactly and the documented tie-break decides
    *_, best_name, best = min((-val_correct[name][i], lr, n, name, i) for n, name in enumerate(names)
                              for i, lr in enumerate(lrs))
    test_top1 = float("nan")
    if test is not None and len(test_labels):
        test_top1 = heads[best_name].correct(test[best_name], test_labels, head=best).item() / len(test_labels)
    return LinearProbeResult(selected=(best_name, lrs[best]), val_top1=val_top1, test_top1=test_top1, epochs=epochs)


# ----------------------------------------------------------------------------------------------------------------
# L-BFGS logistic regression
# ----------------------------------------------------------------------------------------------------------------

def _check_C(C: float) -> float:
    if isinstance(C, bool) or not isinstance(C, int | float) or not C > 0 or math.isinf(C):
        raise ValueError(f"C (inverse L2 strength) must be a finite number > 0, got {C!r}")
    return float(C)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float = 1.0, max_iter: int = 1000,
                 tol: float = 1e-6, *, init: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, (weight (num_classes, D), bias (num_classes,)) in float64, minimising
    C * sum_i CE(x_i W^T + b, y_i) + 0.5 * ||W||^2: scikit-learn's LogisticRegression (L2, bias not penalised), so
    its C values carry over. Full-batch L-BFGS with a strong-Wolfe line search on the objective divided by C * N
    (same minimiser, better conditioned); it stops when the largest gradient entry of that scaled objective is
    below `tol`, or after `max_iter` iterations. `init` warm-starts from an earlier (weight, bias).

    A class with no training rows has an unpenalised bias that drifts towards -inf, so such a fit runs to
    max_iter; it predicts that class nowhere, as scikit-learn (which drops the class) would not either."""
    C = _check_C(C)
    _check_num_classes(num_classes)
    _check_features(x, "x")
    y = _check_labels(y, len(x), num_classes, "train")
    if len(x) == 0:
        raise ValueError("logistic regression needs at least one training row, got 0")
    if max_iter < 1 or not tol > 0:
        raise ValueError(f"fit_logistic needs max_iter >= 1 and tol > 0, got max_iter={max_iter}, tol={tol}")
    x = x.double()
    y = y.to(x.device)
    if init is None:
        weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device)
        bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
    else:
        weight, bias = (p.detach().to(device=x.device, dtype=torch.float64).clone() for p in init)
        if weight.shape != (num_classes, x.shape[1]) or bias.shape != (num_classes,):
            raise ValueError(f"init must be (weight ({num_classes}, {x.shape[1]}), bias ({num_classes},)), got "
                             f"{tuple(weight.shape)} and {tuple(bias.shape)}")
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    penalty = 0.5 / (C * len(x))
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter,
                                  tolerance_grad=tol, tolerance_change=1e-12, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(torch.addmm(bias, x, weight.T), y) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


@torch.no_grad()
def _logistic_top1(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    predictions = torch.addmm(bias, x.to(weight.device).double(), weight.T).argmax(dim=1)
    return (predictions == y.to(weight.device)).double().mean().item()


def logistic_regression_sweep(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                              test_x: torch.Tensor | None, test_y: torch.Tensor | None, num_classes: int,
                              Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0),
                              max_iter: int = 1000) -> LogisticResult:
    """`fit_logistic` at every C, in increasing C, each warm-started from the previous solution (the path moves
    little between neighbouring strengths); validation picks C (ties: the smaller, i.e. stronger regularisation),
    and only that model sees the test split."""
    _check_num_classes(num_classes)
    Cs = sorted(_check_C(c) for c in Cs)
    if not Cs or len(set(Cs)) != len(Cs):
        raise ValueError(f"Cs must be a non-empty list of distinct values, got {Cs}")
    _check_test_pair(test_x, test_y)
    _check_features(train_x, "train_x")
    for what, features in (("val_x", val_x), ("test_x", test_x)):
        if features is not None:
            _check_features(features, what)
            if features.shape[1] != train_x.shape[1]:
                raise ValueError(f"{what} has {features.shape[1]} dims but train_x has {train_x.shape[1]}; "
                                 f"expected the same width")
    val_y = _check_labels(val_y, len(val_x), num_classes, "val")
    if test_x is not None:
        test_y = _check_labels(test_y, len(test_x), num_classes, "test")
    if len(val_y) == 0:
        raise ValueError("val split is empty; expected validation rows to select C on")

    val_top1, fits, previous = {}, {}, None
    for c in Cs:
        fits[c] = previous = fit_logistic(train_x, train_y, num_classes, C=c, max_iter=max_iter, init=previous)
        val_top1[c] = _logistic_top1(*previous, val_x, val_y)
    best = max(Cs, key=lambda c: (val_top1[c], -c))
    test_top1 = float("nan")
    if test_x is not None and len(test_y):
        test_top1 = _logistic_top1(*fits[best], test_x, test_y)
    return LogisticResult(selected_C=best, val_top1=val_top1, test_top1=test_top1)
