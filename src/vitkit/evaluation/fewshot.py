"""N-way K-shot few-shot evaluation of frozen features: SimpleShot (Wang et al. 2019), nearest centroid on CL2N
features (centred by the base/training split's mean feature, then L2-normalised). No training, no
hyper-parameters, so it measures the representation alone.

Every shot count is scored on the same episodes: each episode draws its classes and max(shots) + queries images
per class once; the queries are the last `queries` of them and a k-shot support set the first k, so the 1-shot
and 5-shot numbers differ only by the extra support images, not by luck of the draw."""

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_BATCH_ELEMENTS = 1 << 22  # bounds the per-batch sampling keys and gathered features (~16 MB of float32 each)


@dataclass
class FewShotResult:
    """Accuracy (in [0, 1]) over `episodes` episodes of `ways`-way `shots`-shot with `queries` queries per class;
    ci95 = 1.96 * std / sqrt(episodes), std over episodes (population std, as SimpleShot reports)."""

    ways: int
    shots: int
    queries: int
    episodes: int
    mean: float
    ci95: float

    def to_dict(self) -> dict:
        return asdict(self)


def cl2n(features: Tensor, center: Tensor) -> Tensor:
    """Centre then L2-normalise (SimpleShot's CL2N): removes the offset every feature shares before comparing."""
    return F.normalize(features - center.reshape(1, -1), dim=1)


def _class_table(inverse: Tensor, counts: Tensor) -> Tensor:
    """(C, max count) sample indices of each class, padded with -1 (never read: padding keys sort last)."""
    order = torch.argsort(inverse, stable=True)
    offsets = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(inverse)) - offsets[inverse[order]]
    table = torch.full((len(counts), int(counts.max())), -1, dtype=torch.long)
    table[inverse[order], position] = order
    return table


@torch.no_grad()
def fewshot_eval(features: Tensor, labels: Tensor, ways: int = 5, shots: Sequence[int] = (1, 5), queries: int = 15,
                 episodes: int = 600, seed: int = 0, center: Tensor | None = None) -> list[FewShotResult]:
    """One FewShotResult per entry of `shots`, from `episodes` seeded episodes of nearest-centroid classification.

    `center` is the mean feature to subtract, normally the training split's (features.mean(0) of it); None uses
    the mean of `features` itself. Same seed and inputs give identical results."""
    shots = [int(s) for s in shots]
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {tuple(features.shape)}")
    if labels.shape != (len(features),):
        raise ValueError(f"{len(features)} features but labels has shape {tuple(labels.shape)}; "
                         f"expected ({len(features)},)")
    if not shots or min(shots) < 1:
        raise ValueError(f"shots must be a non-empty list of counts >= 1, got {shots}")
    if queries < 1:
        raise ValueError(f"queries must be >= 1 per class, got {queries}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    classes, inverse, counts = torch.unique(labels.cpu(), return_inverse=True, return_counts=True)
    if ways < 2 or ways > len(classes):
        raise ValueError(f"ways must be between 2 and the {len(classes)} classes present, got {ways}")
    per_class = max(shots) + queries
    smallest = int(counts.argmin())
    if counts[smallest] < per_class:
        raise ValueError(f"{max(shots)}-shot + {queries} queries needs {per_class} images per class; "
                         f"class {classes[smallest].item()} has {int(counts[smallest])}")

    x = features.detach().cpu()
    x = x if x.dtype == torch.float64 else x.float()
    center = x.mean(0) if center is None else center.detach().cpu().to(x.dtype)
    if center.numel() != x.shape[1]:
        raise ValueError(f"center has {center.numel()} values but features are {x.shape[1]}-dim; expected equal")
    z = cl2n(x, center)

    table = _class_table(inverse, counts)
    max_count, dim = table.shape[1], z.shape[1]
    batch = max(1, _BATCH_ELEMENTS // (ways * max(max_count, per_class * dim)))
    generator = torch.Generator().manual_seed(seed)
    truth = torch.arange(ways).repeat_interleave(queries)
    accuracy: dict[int, list[Tensor]] = {s: [] for s in shots}
    for start in range(0, episodes, batch):
        e = min(batch, episodes - start)
        chosen = torch.rand(e, len(classes), generator=generator).argsort(dim=1)[:, :ways]  # (e, ways) classes
        keys = torch.rand(e, ways, max_count, generator=generator)
        keys[torch.arange(max_count) >= counts[chosen][..., None]] = 2.0  # padding never among the smallest keys
        picks = keys.topk(per_class, dim=2, largest=False).indices  # distinct positions, in random order
        episode = z[table[chosen[..., None], picks]]  # (e, ways, per_class, D)
        query = episode[:, :, max(shots):].reshape(e, ways * queries, dim)
        for s in shots:
            prototypes = episode[:, :, :s].mean(dim=2)  # (e, ways, D)
            predicted = torch.cdist(query, prototypes).argmin(dim=2)
            accuracy[s].append((predicted == truth).to(x.dtype).mean(dim=1))
    results = []
    for s in shots:
        per_episode = torch.cat(accuracy[s]).double()
        std = per_episode.std(correction=0).item()
        results.append(FewShotResult(ways, s, queries, episodes, per_episode.mean().item(),
                                     1.96 * std / episodes ** 0.5))
    return results
