"""Linear probes on frozen features: the L-BFGS logistic regression solves scikit-learn's objective (same C, same
solution), and the SGD grid trains every (feature set, lr) head at once, selects on validation and tests only the
selected head. Features are the 8x8 digits (real pixels) and a seeded make_classification problem."""

import math

import pytest
import torch
from sklearn.datasets import load_digits, make_classification
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from vitkit.evaluation.linear import (
    LinearProbeResult,
    LogisticResult,
    fit_logistic,
    linear_probe_grid,
    logistic_regression_sweep,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These problems are small: thread start-up and contention would cost more than a second thread gains."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):  # scikit-learn's BLAS
        yield
    torch.set_num_threads(threads)


def _split(x, y, sizes, seed=0):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for size in sizes:
        index = order[start:start + size]
        parts.append((x[index], y[index]))
        start += size
    return parts


@pytest.fixture(scope="module")
def digits():
    """(train, val, test) of the 1,797 digits, pixels scaled to [0, 1]."""
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    return _split(x, torch.tensor(data.target), (1000, 397, 400))


@pytest.fixture(scope="module")
def synthetic():
    """(train, val, test) of a 10-class, 40-dim problem that a linear model solves well but not perfectly."""
    x, y = make_classification(n_samples=3000, n_features=40, n_informative=20, n_redundant=5, n_classes=10,
                               n_clusters_per_class=1, class_sep=1.5, random_state=0)
    return _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y), (2000, 500, 500))


def _centred(logits):
    """Logits up to the per-row constant that softmax ignores (the unpenalised biases fix it only up to a shift)."""
    return logits - logits.mean(dim=1, keepdim=True)


@pytest.mark.parametrize("dataset, C", [("digits", 0.1), ("digits", 1.0), ("synthetic", 0.1), ("synthetic", 1.0)])
def test_fit_logistic_solves_scikit_learns_objective(dataset, C, request):
    (train_x, train_y), _, (test_x, test_y) = request.getfixturevalue(dataset)
    weight, bias = fit_logistic(train_x, train_y, 10, C=C)
    assert weight.shape == (10, train_x.shape[1]) and bias.shape == (10,) and weight.dtype == torch.float64
    # a tight tol so that the reference is the minimiser itself, not scikit-learn's default stopping point
    reference = LogisticRegression(C=C, max_iter=5000, tol=1e-8).fit(train_x.double().numpy(), train_y.numpy())
    ours = test_x.double() @ weight.T + bias
    theirs = torch.from_numpy(reference.decision_function(test_x.double().numpy()))
    accuracy = (ours.argmax(dim=1) == test_y).double().mean().item()
    assert abs(accuracy - reference.score(test_x.double().numpy(), test_y.numpy())) <= 0.005
    relative = (_centred(ours) - _centred(theirs)).norm() / _centred(theirs).norm()
    assert relative < 1e-2, f"logits differ from scikit-learn's by {relative:.2e} (relative)"
    # the same objective also means the same weights (their class-mean is zero in both: the penalty removes it)
    assert torch.allclose(weight, torch.from_numpy(reference.coef_), atol=2e-2 * weight.abs().max().item())


def test_fit_logistic_regularisation_shrinks_the_weights(digits):
    (train_x, train_y), _, _ = digits
    strong, _ = fit_logistic(train_x, train_y, 10, C=0.01)
    weak, _ = fit_logistic(train_x, train_y, 10, C=1.0)
    assert strong.norm() < 0.5 * weak.norm()


def test_logistic_sweep_selects_on_validation_and_tests_only_the_selected_C(digits):
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = digits
    Cs = (10.0, 0.001, 0.1)
    result = logistic_regression_sweep(train_x, train_y, val_x, val_y, test_x, test_y, 10, Cs=Cs)
    assert isinstance(result, LogisticResult)
    assert list(result.val_top1) == [0.001, 0.1, 10.0]
    best = max(result.val_top1.values())
    assert result.selected_C == min(c for c, acc in result.val_top1.items() if acc == best)
    assert result.val_top1[0.001] < best - 0.05, "a 1000x stronger penalty should cost validation accuracy"
    weight, bias = fit_logistic(train_x, train_y, 10, C=result.selected_C)
    cold = ((test_x.double() @ weight.T + bias).argmax(dim=1) == test_y).double().mean().item()
    assert abs(result.test_top1 - cold) <= 2 / len(test_y), "warm start should not change the solution"
    assert result.to_dict()["val_top1"].keys() == {"0.001", "0.1", "10"}

    no_test = logistic_regression_sweep(train_x, train_y, val_x, val_y, None, None, 10, Cs=(0.1,))
    assert math.isnan(no_test.test_top1) and no_test.to_dict()["test_top1"] is None


LRS = (1e-3, 1e-2, 1e-1)


def _sets(split, noise_seed):
    """Per split: pure noise (listed first) and the informative features, under the same names."""
    x, y = split
    noise = torch.randn(len(x), 24, generator=torch.Generator().manual_seed(noise_seed))
    return {"noise": noise, "informative": x}, y


def test_grid_trains_every_head_selects_on_validation_and_tests_that_head(synthetic):
    (train, train_y), (val, val_y) = (_sets(s, i) for i, s in enumerate(synthetic[:2]))
    # test is the validation split itself: the reported test number must then be the selected head's val number
    result = linear_probe_grid(train, train_y, val, val_y, val, val_y, 10, lrs=LRS, epochs=5)
    assert isinstance(result, LinearProbeResult)
    assert list(result.val_top1) == [f"{name}@lr={lr:g}" for name in ("noise", "informative") for lr in LRS]
    name, lr = result.selected
    assert result.val_top1[f"{name}@lr={lr:g}"] == max(result.val_top1.values())
    assert result.test_top1 == result.val_top1[f"{name}@lr={lr:g}"]
    assert name == "informative" and result.val_top1[f"{name}@lr={lr:g}"] > 0.7
    assert all(result.val_top1[f"noise@lr={lr:g}"] < 0.2 for lr in LRS), "noise should sit near chance (0.1)"
    assert result.epochs == 5 and result.to_dict()["selected"] == ["informative", lr]


def test_grid_reaches_the_logistic_regression_accuracy(synthetic):
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = synthetic
    result = linear_probe_grid({"x": train_x}, train_y, {"x": val_x}, val_y, {"x": test_x}, test_y, 10, epochs=10)
    reference = LogisticRegression(C=1.0, max_iter=5000).fit(train_x.numpy(), train_y.numpy())
    assert result.test_top1 > reference.score(test_x.numpy(), test_y.numpy()) - 0.05


def test_grid_tie_breaks_on_the_smaller_lr_then_the_first_feature_set():
    # two classes a wide margin apart: every head reaches 100% and the documented tie-break decides
    y = torch.arange(200) % 2
    x = torch.randn(200, 4) * 0.1
    x[:, 0] += 4.0 * (2 * y - 1)
    sets = {"second_in_abc": x, "first_in_abc": x.clone()}
    result = linear_probe_grid(sets, y, sets, y, None, None, 2, lrs=(0.3, 0.1), epochs=3, batch_size=32)
    assert set(result.val_top1.values()) == {1.0}
    assert result.selected == ("second_in_abc", 0.1)
    assert math.isnan(result.test_top1) and result.to_dict()["test_top1"] is None


def test_grid_with_batchnorm_does_not_see_a_per_dimension_rescaling(synthetic):
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = synthetic
    rescale = lambda x: x * 300.0 + 1000.0

    def grid(f, batchnorm):
        return linear_probe_grid({"x": f(train_x)}, train_y, {"x": f(val_x)}, val_y, None, None, 10, lrs=LRS,
                                 epochs=5, batchnorm=batchnorm).val_top1

    normed, normed_rescaled = grid(lambda x: x, True), grid(rescale, True)
    plain, plain_rescaled = grid(lambda x: x, False), grid(rescale, False)
    assert max(normed.values()) > 0.7
    assert all(abs(normed[k] - normed_rescaled[k]) <= 0.01 for k in normed), (normed, normed_rescaled)
    assert any(abs(plain[k] - plain_rescaled[k]) > 0.05 for k in plain), "the plain heads should feel the scale"
    # a one-row test split: evaluation uses the running statistics (a batch of one cannot be normalised by itself)
    one = linear_probe_grid({"x": train_x}, train_y, {"x": val_x}, val_y, {"x": test_x[:1]}, test_y[:1], 10,
                            lrs=LRS, epochs=1, batchnorm=True)
    assert one.test_top1 in (0.0, 1.0)


def test_grid_is_deterministic_for_a_seed_and_accepts_float16(synthetic):
    (train_x, train_y), (val_x, val_y), _ = synthetic
    args = ({"x": train_x.half()}, train_y, {"x": val_x.half()}, val_y, None, None, 10)
    first = linear_probe_grid(*args, lrs=LRS, epochs=2, seed=3)
    assert first.val_top1 == linear_probe_grid(*args, lrs=LRS, epochs=2, seed=3).val_top1
    assert first.val_top1 != linear_probe_grid(*args, lrs=LRS, epochs=2, seed=4).val_top1
    assert max(first.val_top1.values()) > 0.6


def _tiny():
    x = torch.randn(20, 8)
    y = torch.arange(20) % 4
    return {"a": x}, y


@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(val={"b": a["val"]["a"]}), r"names differ between train and val: only in train \['a'\]"),
    (lambda a: a.update(test={"a": a["test"]["a"], "b": a["test"]["a"]}), r"only in test \['b'\]"),
    (lambda a: a.update(train_labels=a["train_labels"][:-1]), r"train feature set 'a' has 20 rows but train_labels "
                                                              r"has 19"),
    (lambda a: a.update(val={"a": a["val"]["a"][:, :7]}), r"val feature set 'a' has 7 dims but train has 8"),
    (lambda a: a["val_labels"].__setitem__(3, 4), r"val label 4 is outside \[0, 4\)"),
    (lambda a: a["train_labels"].__setitem__(0, -1), r"train label -1 is outside \[0, 4\)"),
    (lambda a: a.update(val_labels=a["val_labels"].float()), r"val labels must be integer class indices"),
    (lambda a: a.update(val={"a": a["val"]["a"][:0]}, val_labels=a["val_labels"][:0]), r"val split is empty"),
    (lambda a: a.update(test_labels=None), r"test and test_labels go together"),
    (lambda a: a.update(lrs=(0.1, 0.0)), r"lrs must be distinct positive learning rates .*, got \[0.1, 0.0\]"),
    (lambda a: a.update(batchnorm=True, batch_size=1), r"batchnorm needs at least 2 samples per batch"),
])
def test_grid_rejects_bad_input(change, match):
    (train, y), (val, val_y), (test, test_y) = _tiny(), _tiny(), _tiny()
    args = dict(train=train, train_labels=y, val=val, val_labels=val_y, test=test, test_labels=test_y,
                num_classes=4, epochs=1)
    change(args)
    with pytest.raises(ValueError, match=match):
        linear_probe_grid(**args)


def test_logistic_rejects_bad_input():
    x, y = torch.randn(20, 8), torch.arange(20) % 4
    with pytest.raises(ValueError, match=r"C \(inverse L2 strength\) must be a finite number > 0, got 0"):
        fit_logistic(x, y, 4, C=0)
    with pytest.raises(ValueError, match=r"must be a finite number > 0, got -1.0"):
        logistic_regression_sweep(x, y, x, y, None, None, 4, Cs=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"train label 4 is outside \[0, 4\)"):
        fit_logistic(x, y + 1, 4)
    with pytest.raises(ValueError, match=r"val split is empty"):
        logistic_regression_sweep(x, y, x[:0], y[:0], None, None, 4)
    with pytest.raises(ValueError, match=r"train has 20 feature rows but 19 labels"):
        fit_logistic(x, y[:-1], 4)
