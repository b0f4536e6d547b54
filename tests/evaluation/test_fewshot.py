"""SimpleShot few-shot evaluation: separable clusters, noise at chance, determinism, CL2N centering, errors."""

import pytest
import torch

from vitkit.evaluation.fewshot import FewShotResult, fewshot_eval

CLASSES, PER_CLASS, DIM = 12, 30, 16


def clusters(spread: float, seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, DIM, generator=g, dtype=torch.float64)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    features = centres[labels] + spread * torch.randn(len(labels), DIM, generator=g, dtype=torch.float64)
    return features.to(dtype), labels


def test_separable_clusters_are_solved():
    results = fewshot_eval(*clusters(spread=0.05), ways=5, shots=(1, 5), queries=10, episodes=100)
    assert [r.shots for r in results] == [1, 5]
    assert all(isinstance(r, FewShotResult) and r.mean > 0.99 for r in results)
    assert results[0].to_dict() == {"ways": 5, "shots": 1, "queries": 10, "episodes": 100,
                                    "mean": results[0].mean, "ci95": results[0].ci95}


def test_uneven_class_sizes_sample_only_real_members():
    features, labels = clusters(spread=0.05)
    keep = torch.ones(len(labels), dtype=torch.bool)
    for c in range(0, CLASSES, 2):  # every other class loses a different number of images
        keep[(labels == c).nonzero()[: c + 3]] = False
    results = fewshot_eval(features[keep], labels[keep], ways=5, shots=(1, 5), queries=10, episodes=200)
    assert all(r.mean > 0.99 for r in results)


def test_noise_is_at_chance():
    g = torch.Generator().manual_seed(1)
    noise, labels = torch.randn(CLASSES * PER_CLASS, DIM, generator=g), torch.randint(0, CLASSES, (360,), generator=g)
    for r in fewshot_eval(noise, labels, ways=4, shots=(1, 5), queries=5, episodes=400):
        assert abs(r.mean - 0.25) < 3 * r.ci95 + 0.02, r


def test_deterministic_per_seed_and_seeds_differ():
    features, labels = clusters(spread=1.5)
    first = fewshot_eval(features, labels, episodes=50, queries=10, seed=3)
    assert first == fewshot_eval(features, labels, episodes=50, queries=10, seed=3)
    assert first != fewshot_eval(features, labels, episodes=50, queries=10, seed=4)


def test_ci_shrinks_with_more_episodes():
    features, labels = clusters(spread=1.5)
    few = fewshot_eval(features, labels, shots=(1,), queries=10, episodes=20)[0]
    many = fewshot_eval(features, labels, shots=(1,), queries=10, episodes=500)[0]
    assert 0 < many.ci95 < few.ci95 / 2


def test_centering_removes_a_shared_offset():
    features, labels = clusters(spread=1.0, dtype=torch.float64)
    offset = features + 50.0  # every feature shares a big component: cosine sees one direction without centering
    base = fewshot_eval(features, labels, queries=10, episodes=100)
    shifted = fewshot_eval(offset, labels, queries=10, episodes=100)
    assert [r.mean for r in shifted] == pytest.approx([r.mean for r in base], abs=1e-12)
    uncentred = fewshot_eval(offset, labels, queries=10, episodes=100, center=torch.zeros(DIM))
    assert [r.mean for r in uncentred] != [r.mean for r in shifted]  # center is really used
    # The training split's mean as center: same as centering on this split's own mean here.
    given = fewshot_eval(offset, labels, queries=10, episodes=100, center=offset.mean(0))
    assert [r.mean for r in given] == pytest.approx([r.mean for r in base], abs=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    ({"ways": 1}, "ways must be between 2 and the 12 classes present, got 1"),
    ({"ways": 13}, "ways must be between 2 and the 12 classes present, got 13"),
    ({"episodes": 0}, "episodes must be >= 1"),
    ({"shots": (1, 20)}, "20-shot"),
    ({"shots": (0,)}, "shots must be"),
    ({"queries": 0}, "queries must be >= 1"),
    ({"center": torch.zeros(3)}, "center has 3 values"),
])
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fewshot_eval(*clusters(spread=1.0), **kwargs)


def test_input_errors():
    features, labels = clusters(spread=1.0)
    labels = labels.clone()
    labels[labels == 3] = torch.tensor([3] * 12 + [4] * 18)  # class 3 keeps 12 images
    with pytest.raises(ValueError, match="5-shot \\+ 15 queries needs 20 images per class; class 3 has 12"):
        fewshot_eval(features, labels)
    with pytest.raises(ValueError, match="360 features but labels has shape"):
        fewshot_eval(features, labels[:-1])
