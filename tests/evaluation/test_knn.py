"""knn_classify against scikit-learn's brute-force cosine kNN, the existing knn_predict, and its error cases."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from vitkit.evaluation.knn import knn_classify, knn_predict

CLASSES = 7


def clustered(n: int, dim: int = 32, seed: int = 0, spread: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian clusters: neighbours of mixed classes, so votes (and vote ties) really happen."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, dim, generator=torch.Generator().manual_seed(123))
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


@pytest.fixture(scope="module")
def data():
    bank, bank_labels = clustered(2000, seed=1)
    queries, _ = clustered(500, seed=2)
    return bank, bank_labels, queries


def test_uniform_equals_sklearn(data):
    bank, bank_labels, queries = data
    ks = (1, 4, 10, 20, 50)
    ours = knn_classify(bank, bank_labels, queries, CLASSES, ks=ks, weighting="uniform")
    for k in ks:
        sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute", weights="uniform")
        expected = sk.fit(bank.numpy(), bank_labels.numpy()).predict(queries.numpy())
        np.testing.assert_array_equal(ours[k].numpy(), expected, err_msg=f"k={k}")


def test_uniform_vote_ties_go_to_smallest_class():
    # Two neighbours at equal distance-rank of classes 2 and 5: a 1-1 tie that must go to class 2, as sklearn does.
    bank = torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.0]])
    bank_labels = torch.tensor([5, 2, 0])
    out = knn_classify(bank, bank_labels, torch.tensor([[1.0, 0.05]]), 6, ks=(2,), weighting="uniform")
    assert out[2].tolist() == [2]


def test_exp_matches_knn_predict(data):
    bank, bank_labels, queries = data
    ours = knn_classify(bank, bank_labels, queries, CLASSES, ks=(5, 20, 200), temperature=0.1)
    for k in (5, 20, 200):
        scores = knn_predict(bank, bank_labels, queries, CLASSES, k=k, temperature=0.1)
        assert torch.equal(ours[k], scores.argmax(dim=1))


def test_chunk_size_does_not_change_results(data):
    bank, bank_labels, queries = data
    for weighting in ("exp", "uniform"):
        small = knn_classify(bank, bank_labels, queries[:100], CLASSES, ks=(3, 20), chunk=7, weighting=weighting)
        large = knn_classify(bank, bank_labels, queries[:100], CLASSES, ks=(3, 20), chunk=1024, weighting=weighting)
        assert all(torch.equal(small[k], large[k]) for k in (3, 20))


def test_float16_features(data):
    bank, bank_labels, queries = data
    half = knn_classify(bank.half(), bank_labels, queries.half(), CLASSES, ks=(20,))
    full = knn_classify(bank, bank_labels, queries, CLASSES, ks=(20,))
    assert half[20].dtype == torch.long and half[20].shape == (len(queries),)
    assert (half[20] == full[20]).float().mean() > 0.95  # fp16 rounding may move a few borderline votes


def test_empty_queries_and_knn_predict_still_clamps_k(data):
    bank, bank_labels, _ = data
    assert knn_classify(bank, bank_labels, torch.zeros(0, 32), CLASSES, ks=(1,))[1].shape == (0,)
    scores = knn_predict(bank[:5], bank_labels[:5], bank[:3], CLASSES, k=20)  # the monitor's small-bank case
    assert scores.shape == (3, CLASSES)


@pytest.mark.parametrize("kwargs, message", [
    ({"ks": (10, 2001)}, r"k=2001 is larger than the feature bank \(2000 rows\)"),
    ({"ks": (0, 5)}, "k must be >= 1"),
    ({"ks": ()}, "ks is empty"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"weighting": "cosine"}, "weighting must be one of"),
    ({"chunk": 0}, "chunk must be >= 1"),
])
def test_argument_errors(data, kwargs, message):
    bank, bank_labels, queries = data
    with pytest.raises(ValueError, match=message):
        knn_classify(bank, bank_labels, queries[:4], CLASSES, **kwargs)


def test_input_errors(data):
    bank, bank_labels, queries = data
    with pytest.raises(ValueError, match="32-dim features but queries have 16"):
        knn_classify(bank, bank_labels, queries[:4, :16], CLASSES, ks=(1,))
    with pytest.raises(ValueError, match="2000 rows but bank_labels has shape"):
        knn_classify(bank, bank_labels[:-1], queries[:4], CLASSES, ks=(1,))
    with pytest.raises(ValueError, match="non-empty feature bank"):
        knn_classify(bank[:0], bank_labels[:0], queries[:4], CLASSES, ks=(1,))
    with pytest.raises(ValueError, match=r"bank_labels must lie in \[0, 3\)"):
        knn_classify(bank, bank_labels, queries[:4], 3, ks=(1,))
