"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol, also its kNN monitor):
cosine similarity to a labelled bank, the top k neighbours vote with weight exp(similarity / T).

Pure functions on tensors; `vitkit probe` and the pretraining monitor both use them."""

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores (Q, num_classes) of `queries` (Q, D) from the `k` most similar rows of `bank` (N, D)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    if len(bank) == 0:
        raise ValueError("kNN needs a non-empty feature bank")
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    scores = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        similarity, index = (q @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(len(q), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, bank_labels[index], weights)
        scores.append(votes)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


def knn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor,
             num_classes: int, k: int = 20, temperature: float = 0.07) -> float:
    scores = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    return (scores.argmax(dim=1) == labels).float().mean().item()
