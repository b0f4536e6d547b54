"""What every self-supervised objective logs at each evaluation: collapse diagnostics of the backbone's
pooled features and a kNN monitor (k=20, cosine, T=0.07, weighted vote) on a labelled subset of the
training split, queried with the evaluated split."""

from dataclasses import dataclass

import torch
from torch import nn

from ...data.batches import eval_batches
from ...evaluation.collapse import effective_rank, feature_std
from ...evaluation.knn import knn_predict

MIN_RANK = 2.0  # an effective rank below this: (nearly) one direction for every image
# of 1/sqrt(D), the per-dimension std of well-spread unit vectors. Early MAE features sit at ~2% of it and
# still separate classes (kNN far above chance); a representation at 0.2% is one point plus noise.
MIN_STD_FRACTION = 0.002


@torch.no_grad()
def pooled_features(model: nn.Module, dataset, transform, limit: int | None = None,
                    batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) = forward_head(forward_features(x), pre_logits=True), labels (N,)), in order."""
    model.eval()
    device = next(model.parameters()).device
    features, labels = [], []
    seen = 0
    for images, targets in eval_batches(dataset, transform, batch_size):
        if limit is not None and seen >= limit:
            break
        out = model.forward_head(model.forward_features(images.to(device)), pre_logits=True)
        features.append(out.float().cpu())
        labels.append(targets)
        seen += len(images)
    features, labels = torch.cat(features), torch.cat(labels)
    return (features[:limit], labels[:limit]) if limit is not None else (features, labels)


@dataclass
class KnnReport:
    """The test split's result of a self-supervised run (eval.json): kNN top-1 with the labelled bank."""

    top1: float
    top5: float
    num_samples: int
    bank_size: int
    k: int
    temperature: float
    feature_std: float
    effective_rank: float

    def to_dict(self) -> dict:
        return dict(vars(self))


class FeatureMonitor:
    """Evaluates a backbone's pooled features: collapse diagnostics and kNN top-1 against a bank of up to
    `bank_size` labelled training images (a fixed, seeded subset)."""

    def __init__(self, bank_set, transform, num_classes: int, bank_size: int = 5000, k: int = 20,
                 temperature: float = 0.07, seed: int = 0):
        self.transform, self.num_classes, self.k, self.temperature = transform, num_classes, k, temperature
        order = torch.randperm(len(bank_set), generator=torch.Generator().manual_seed(seed))[:bank_size]
        self.bank_set = bank_set.subset(order.sort().values.numpy()) if hasattr(bank_set, "subset") else bank_set

    def evaluate(self, model: nn.Module, dataset) -> dict:
        bank, bank_labels = pooled_features(model, self.bank_set, self.transform)
        queries, labels = pooled_features(model, dataset, self.transform)
        scores = knn_predict(bank, bank_labels, queries, self.num_classes, self.k, self.temperature)
        top = scores.topk(min(5, self.num_classes), dim=1).indices
        top1 = (top[:, 0] == labels).float().mean().item()
        top5 = (top == labels[:, None]).any(dim=1).float().mean().item()
        std, rank = feature_std(queries), effective_rank(queries)
        report = KnnReport(top1, top5, len(labels), len(bank), self.k, self.temperature, std, rank)
        return {"knn_top1": top1, "knn_top5": top5, "feature_std": std, "effective_rank": rank,
                "feature_dim": queries.shape[1], "report": report}


def collapse_reason(metrics: dict) -> str | None:
    """Why `metrics` (from FeatureMonitor.evaluate) show collapsed features, or None."""
    std_floor = MIN_STD_FRACTION / metrics["feature_dim"] ** 0.5
    if metrics["effective_rank"] < MIN_RANK:
        return f"effective rank {metrics['effective_rank']:.2f} < {MIN_RANK} (features on about one direction)"
    if metrics["feature_std"] < std_floor:
        return f"feature std {metrics['feature_std']:.2e} < {std_floor:.1e} (every image gets about the same vector)"
    return None
