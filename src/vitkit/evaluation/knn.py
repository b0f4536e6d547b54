"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol, also its kNN monitor):
cosine similarity to a labelled bank, the top k neighbours vote with weight exp(similarity / T).

Pure functions on tensors; `vitkit probe` and the pretraining monitor both use them. Every entry point goes
through `_neighbours`, which normalises the bank once and walks the queries in chunks, so memory stays at one
(chunk, N) similarity block whatever the number of queries."""

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

WEIGHTINGS = ("exp", "uniform")


def _check_bank(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int) -> None:
    if bank.ndim != 2 or queries.ndim != 2:
        raise ValueError(f"kNN needs 2-D features, got bank {tuple(bank.shape)} and queries {tuple(queries.shape)}")
    if len(bank) == 0:
        raise ValueError("kNN needs a non-empty feature bank, got 0 rows")
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"bank has {bank.shape[1]}-dim features but queries have {queries.shape[1]}; expected equal")
    if bank_labels.shape != (len(bank),):
        raise ValueError(f"bank has {len(bank)} rows but bank_labels has shape {tuple(bank_labels.shape)}; "
                         f"expected ({len(bank)},)")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    low, high = int(bank_labels.min()), int(bank_labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"bank_labels must lie in [0, {num_classes}), got values in [{low}, {high}]")


def _neighbours(bank: Tensor, queries: Tensor, k: int, chunk: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(similarity, index), each (chunk, k) sorted by decreasing cosine similarity, for consecutive query chunks."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    bank = F.normalize(bank.float(), dim=1)  # float32 whatever comes in: fp16 dot products lose too much
    # One (chunk, N) block reused for every chunk: a fresh 250 MB allocation per chunk costs ~20% in page faults.
    block = torch.empty(min(chunk, len(queries)), len(bank), device=bank.device)
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start:start + chunk].to(device=bank.device, dtype=torch.float32), dim=1)
        similarity = torch.mm(q, bank.T, out=block[:len(q)])
        yield torch.topk(similarity, k, dim=1, largest=True, sorted=True)


def _votes(similarity: Tensor, labels: Tensor, num_classes: int, temperature: float, weighting: str) -> Tensor:
    """(Q, num_classes) vote totals of the neighbours in `similarity`/`labels` (both (Q, k))."""
    if weighting == "exp":
        weights = (similarity / temperature).exp()
    else:
        weights = torch.ones_like(similarity)
    votes = torch.zeros(len(similarity), num_classes, dtype=weights.dtype, device=weights.device)
    return votes.scatter_add_(1, labels, weights)


@torch.no_grad()
def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> Tensor:
    """Class scores (Q, num_classes) of `queries` (Q, D) from the `k` most similar rows of `bank` (N, D).

    k is clamped to the bank size: the pretraining monitor runs with small banks and should not fail on them."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    _check_bank(bank, bank_labels, queries, num_classes)
    k = min(k, len(bank))
    bank_labels = bank_labels.to(device=bank.device, dtype=torch.long)
    scores = [_votes(similarity, bank_labels[index], num_classes, temperature, "exp")
              for similarity, index in _neighbours(bank, queries, k, chunk)]
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


@torch.no_grad()
def knn_classify(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int,
                 ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07, weighting: str = "exp",
                 chunk: int = 1024) -> dict[int, Tensor]:
    """{k: predicted labels (Q,)} for every k in `ks`, from one top-max(ks) search per chunk of queries.

    weighting="exp" is DINO's exp(similarity / T) vote; "uniform" counts each neighbour once (then it equals
    scikit-learn's brute-force cosine KNeighborsClassifier, vote ties going to the smallest class index).
    Unlike knn_predict, a k larger than the bank is an error: a reported k@200 must really use 200 neighbours."""
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks is empty; expected at least one k")
    if min(ks) < 1:
        raise ValueError(f"every k must be >= 1, got ks={ks}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    _check_bank(bank, bank_labels, queries, num_classes)
    if max(ks) > len(bank):
        raise ValueError(f"k={max(ks)} is larger than the feature bank ({len(bank)} rows)")
    bank_labels = bank_labels.to(device=bank.device, dtype=torch.long)
    predictions: dict[int, list[Tensor]] = {k: [] for k in ks}
    for similarity, index in _neighbours(bank, queries, max(ks), chunk):
        labels = bank_labels[index]
        for k in predictions:  # the top-k are sorted, so each k's neighbours are the first k columns
            votes = _votes(similarity[:, :k], labels[:, :k], num_classes, temperature, weighting)
            predictions[k].append(votes.argmax(dim=1))  # first maximum: ties go to the smallest class
    empty = torch.zeros(0, dtype=torch.long, device=bank.device)
    return {k: torch.cat(chunks) if chunks else empty for k, chunks in predictions.items()}


def knn_top1(bank: Tensor, bank_labels: Tensor, queries: Tensor, labels: Tensor,
             num_classes: int, k: int = 20, temperature: float = 0.07) -> float:
    scores = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    return (scores.argmax(dim=1) == labels).float().mean().item()
