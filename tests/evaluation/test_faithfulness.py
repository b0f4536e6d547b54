"""Deletion / insertion curves (vitkit.evaluation.faithfulness): on a model whose answer is known the true map
beats random maps and the inverted map does not; curve end points; a report over real explainers."""

import time

import pytest
import torch
from torch import nn

import vitkit
from vitkit.evaluation.explanations import explain, occlusion, supported_methods
from vitkit.evaluation.faithfulness import blur, deletion, faithfulness_report, insertion, random_baseline


class TopLeftBrightness(nn.Module):
    """The class-0 logit is 10 x (mean brightness of the top-left quadrant - 0.5), class 1's is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        score = 10 * (x[:, :, :h, :w].mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def top_left_images(n: int = 8) -> torch.Tensor:
    """Dim noise with a bright top-left quadrant."""
    x = 0.2 * torch.rand(n, 3, 32, 32)
    x[:, :, :16, :16] += 0.7
    return x


def quadrant_map(n: int, top_left: bool = True) -> torch.Tensor:
    maps = torch.zeros(n, 32, 32)
    maps[:, :16, :16] = 1.0
    return maps if top_left else 1.0 - maps


def test_curves_start_and_end_where_they_should():
    model, x = TopLeftBrightness(), top_left_images()
    probs = model(x).softmax(-1)[:, 0]
    deleted = deletion(model, x, quadrant_map(8), targets=0, steps=10)
    inserted = insertion(model, x, quadrant_map(8), targets=0, steps=10)
    assert deleted.probs.shape == inserted.probs.shape == (8, 11) and deleted.auc.shape == (8,)
    torch.testing.assert_close(deleted.probs[:, 0], probs)
    torch.testing.assert_close(deleted.probs[:, -1], model(torch.zeros_like(x)).softmax(-1)[:, 0])
    torch.testing.assert_close(inserted.probs[:, 0], model(blur(x)).softmax(-1)[:, 0])
    torch.testing.assert_close(inserted.probs[:, -1], probs)
    torch.testing.assert_close(deleted.probs[:, 3:], deleted.probs[:, -1:].expand(-1, 8))  # quadrant gone at 1/4
    torch.testing.assert_close(deleted.auc, torch.trapezoid(deleted.probs, dx=0.1, dim=1))


def test_blur_keeps_a_constant_image_and_smooths_an_edge():
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(blur(flat), flat)
    edge = torch.zeros(1, 1, 16, 16)
    edge[..., 8:] = 1.0
    assert 0 < blur(edge)[0, 0, 0, 7] < 0.5 < blur(edge)[0, 0, 0, 8] < 1


def test_the_true_map_beats_random_maps_and_the_inverted_one_does_not():
    model, x = TopLeftBrightness(), top_left_images()
    maps = {"true": quadrant_map(8), "inverted": quadrant_map(8, top_left=False),
            "occlusion": occlusion(model, x, targets=0, window=4)}
    report = faithfulness_report(model, x, 0, maps, steps=20, seed=0)
    random = report["random"]
    for name in ("true", "occlusion"):
        scores = report["methods"][name]
        assert scores["deletion_auc"] < random["deletion_auc"] and scores["insertion_auc"] > random["insertion_auc"]
        assert scores["beats_random"], name
    inverted = report["methods"]["inverted"]
    assert inverted["deletion_auc"] > random["deletion_auc"] and not inverted["beats_random"]


def test_random_baseline_is_seeded():
    model, x = TopLeftBrightness(), top_left_images(4)
    first, again = (random_baseline(model, x, 0, steps=5, repeats=2, seed=1, cell=4) for _ in range(2))
    other = random_baseline(model, x, 0, steps=5, repeats=2, seed=2, cell=4)
    assert torch.equal(first["deletion"].probs, again["deletion"].probs)
    assert not torch.equal(first["insertion"].probs, other["insertion"].probs)


def test_maps_of_another_shape_are_refused():
    with pytest.raises(ValueError, match=r"maps must be \(B, H, W\) = \(8, 32, 32\)"):
        deletion(TopLeftBrightness(), top_left_images(), torch.rand(8, 8, 8))


def test_a_report_over_every_method_of_a_tiny_vit_is_quick():
    """64 images x 21 steps x 7 methods x 2 curves plus 3 random draws: the size the report is meant for."""
    model = vitkit.create_model("vit_pico_patch4_32", embed_dim=32, depth=2, num_heads=2, num_classes=5).eval()
    x = torch.randn(64, 3, 32, 32)
    maps = {method: explain(model, x, method) for method in supported_methods(model)}
    start = time.perf_counter()
    report = faithfulness_report(model, x, None, maps, steps=20)
    assert time.perf_counter() - start < 45
    assert set(report["methods"]) == set(maps)
    for scores in [*report["methods"].values(), report["random"]]:
        assert 0 <= scores["deletion_auc"] <= 1 and 0 <= scores["insertion_auc"] <= 1
