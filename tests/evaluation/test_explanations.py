"""Saliency maps (vitkit.evaluation.explanations) for every family: shapes and range, hand-computed Grad-CAM,
the explicit-attention mode Chefer relevance needs, refusals, occlusion on a model whose answer is known,
and occlusion against captum."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitkit
from vitkit.evaluation.explanations import (
    EXPLAINERS,
    attention_rollout_map,
    chefer_relevance,
    explain,
    grad_cam,
    occlusion,
    supported_methods,
)

VIT = dict(embed_dim=32, depth=2, num_heads=2, num_classes=5)  # the sizes of tests/contract's tiny models
MODELS = {
    "vit": ("vit_pico_patch4_32", VIT),
    "vit_avg": ("vit_pico_patch4_32", dict(VIT, class_token=False, global_pool="avg")),
    "vit_map": ("vit_pico_patch4_32", dict(VIT, global_pool="map")),
    "deit_distilled": ("deit_pico_distilled_patch4_32", VIT),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=2, window_size=4, embed_dim=8,
                                                  depths=(2, 2), num_heads=(1, 2), num_classes=5)),
    "convnext": ("convnext_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=5)),
}
SIZE = {"convnext": 64}  # two cells per side on its stride-32 last stage


def tiny(key: str) -> nn.Module:
    name, overrides = MODELS[key]
    return vitkit.create_model(name, **overrides).eval()


def images_for(key: str, n: int = 2) -> torch.Tensor:
    size = SIZE.get(key, 32)
    return torch.randn(n, 3, size, size)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - low) / (high - low)).view_as(maps)


@pytest.mark.parametrize("key", MODELS)
def test_every_supported_method_gives_normalised_maps(key):
    model, x = tiny(key), images_for(key)
    assert all(info.module in dict(model.named_modules()) for info in model.feature_info)
    token_sequence = key.startswith(("vit", "deit"))
    assert supported_methods(model) == (list(EXPLAINERS) if token_sequence
                                        else ["gradcam", "gradcam++", "xgradcam", "hirescam", "occlusion"])
    for method in supported_methods(model):
        maps = explain(model, x, method)
        assert maps.shape == (2, *x.shape[-2:]), method
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, method
        assert (maps.flatten(1).amax(1) == 1).all(), f"{method} gave a constant map"


def hand_grad_cam(captured: torch.Tensor, logits: torch.Tensor, size, to_grid=lambda t: t) -> torch.Tensor:
    """Selvaraju et al.: weights = spatial mean of the gradients, relu of the weighted sum, for the predicted class;
    `to_grid` lays the captured activation and its gradient out as (B, C, h, w)."""
    score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    activation, grad = to_grid(captured), to_grid(torch.autograd.grad(score, captured)[0])
    cam = (grad.mean(dim=(2, 3), keepdim=True) * activation).sum(1).relu()
    return normalise(F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0])


def test_grad_cam_on_convnext_is_the_hand_computed_one_from_the_last_stage():
    model, x = tiny("convnext"), images_for("convnext")
    h = model.stem(x)
    for stage in model.stages:
        h = stage(h)
    logits = model.forward_head(model.norm_pre(h))
    torch.testing.assert_close(grad_cam(model, x), hand_grad_cam(h, logits, x.shape[-2:]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("key", "layer"), [("vit", 0), ("vit_avg", 1)])
def test_grad_cam_on_vit_is_the_hand_computed_one_from_patch_tokens(key, layer):
    """The default layer: the last block for average pooling; the one before for class-token pooling, as the
    last block's patch outputs never reach the class token."""
    model, x = tiny(key), images_for(key)
    tokens = model.embed(x)
    for i, block in enumerate(model.blocks):
        tokens = block(tokens)
        if i == layer:
            captured = tokens
    logits = model.forward_head(model.norm(tokens))

    def to_grid(t):  # as forward_intermediates lays tokens out: prefix dropped, row-major patch grid
        return t[:, model.num_prefix_tokens:].reshape(2, 8, 8, -1).permute(0, 3, 1, 2)

    expected = hand_grad_cam(captured, logits, x.shape[-2:], to_grid)
    torch.testing.assert_close(grad_cam(model, x), expected, atol=1e-5, rtol=0)


def test_grad_cam_refuses_a_layer_the_head_does_not_see():
    with pytest.raises(ValueError, match=r"do not depend on 'blocks.1' \(zero gradient\); use an earlier layer"):
        grad_cam(tiny("vit"), images_for("vit"), layer=-1)


def test_grad_cam_refuses_a_module_whose_output_is_no_feature_map():
    model, x = tiny("convnext"), images_for("convnext")
    model.feature_info[-1] = replace(model.feature_info[-1], module="head")
    with pytest.raises(ValueError, match=r"module 'head' gives \(2, 5\), which is neither \(B, C, H, W\), "
                                         r"\(B, H, W, C\) nor \(B, prefix \+ H\*W, C\) for the map \(2, 32, 2, 2\)"):
        grad_cam(model, x)


def test_explicit_attention_matches_the_fused_path_which_stays_unchanged():
    model, x = tiny("vit"), images_for("vit")
    with torch.no_grad():
        fused = model(x)
        with vitkit.capture_attention(model) as detached:
            assert torch.equal(model(x), fused)
    with vitkit.capture_attention(model, grad=True) as maps:
        explicit = model(x)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=0)
    assert all(m.requires_grad for m in maps) and not any(m.requires_grad for m in detached)
    torch.testing.assert_close(torch.stack(maps).detach(), torch.stack(detached), atol=1e-6, rtol=0)
    assert not any(block.attn.attention_grad for block in model.blocks)
    with torch.no_grad():
        assert torch.equal(model(x), fused)


def test_chefer_relevance_follows_the_target_class():
    model, x = tiny("vit"), images_for("vit", n=1)
    maps = [chefer_relevance(model, x, targets=t) for t in range(5)]
    assert all(m.shape == (1, 32, 32) for m in maps)
    assert any(not torch.allclose(maps[0], m) for m in maps[1:])
    assert torch.equal(attention_rollout_map(model, x), explain(model, x, "rollout", targets=3))  # class-agnostic


@pytest.mark.parametrize(("key", "method", "family", "reason"), [
    ("swin", "chefer", "SwinTransformer", r"WindowAttention modules give per-window"),
    ("swin", "rollout", "SwinTransformer", r"WindowAttention modules give per-window"),
    ("convnext", "chefer", "ConvNeXt", r"no attention modules"),
    ("convnext", "rollout", "ConvNeXt", r"no attention modules"),
])
def test_attention_methods_refuse_other_families_and_point_to_grad_cam(key, method, family, reason):
    model, x = tiny(key), images_for(key)
    with pytest.raises(ValueError, match=rf"^{method} cannot explain {family}: .*{reason}.*; methods that can: "
                                         r"gradcam, gradcam\+\+, xgradcam, hirescam, occlusion$"):
        explain(model, x, method)
    direct = {"chefer": chefer_relevance, "rollout": attention_rollout_map}[method]
    with pytest.raises(ValueError, match=rf"{method} cannot explain {family}"):
        direct(model, x)


def test_attention_with_gradients_is_refused_where_no_module_offers_it():
    with pytest.raises(ValueError, match=r"SwinTransformer: WindowAttention cannot give attention probabilities "
                                         r"with gradients"):
        with vitkit.capture_attention(tiny("swin"), grad=True):
            pass


def test_unknown_methods_and_layers_are_refused_with_the_valid_names():
    model, x = tiny("vit"), images_for("vit")
    with pytest.raises(ValueError, match=r"layer 2 is out of range for the 2 entries of feature_info"):
        grad_cam(model, x, layer=2)
    with pytest.raises(ValueError, match=r"unknown explanation method 'lime'; expected one of rollout, gradcam, "
                                         r"gradcam\+\+, xgradcam, hirescam, chefer, occlusion"):
        explain(model, x, "lime")
    with pytest.raises(ValueError, match=r"method must be one of gradcam, gradcam\+\+, xgradcam, hirescam"):
        grad_cam(model, x, method="scorecam")


class TopLeftBrightness(nn.Module):
    """A model whose answer is known: the class-0 logit is 10 x (mean brightness of the top-left quadrant - 0.5),
    class 1's is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        score = 10 * (x[:, :, :h, :w].mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def top_left_images(n: int = 4) -> torch.Tensor:
    """Dim noise with a bright top-left quadrant."""
    x = 0.2 * torch.rand(n, 3, 32, 32)
    x[:, :, :16, :16] += 0.7
    return x


def test_occlusion_finds_the_region_the_model_looks_at():
    maps = occlusion(TopLeftBrightness(), top_left_images(), targets=0, window=8, stride=4)
    assert maps.shape == (4, 32, 32)
    peaks = maps.flatten(1).argmax(1)
    assert (peaks // 32 < 16).all() and (peaks % 32 < 16).all()
    assert (maps[:, :12, :12] > 0.9).all()  # covered only by windows inside the quadrant
    assert (maps[:, 20:, :] == 0).all() and (maps[:, :, 20:] == 0).all()  # windows that miss it change nothing


@pytest.mark.parametrize(("window", "stride", "baseline"), [(8, 4, 0.0), (12, 8, 0.5)])  # (12, 8): clipped windows
def test_occlusion_matches_captum(window, stride, baseline):
    captum = pytest.importorskip("captum.attr")
    model, x = tiny("vit"), images_for("vit", n=3)
    with torch.no_grad():
        targets = model(x).argmax(1)
        peer = captum.Occlusion(lambda images: model(images).softmax(-1)).attribute(
            x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=baseline,
            target=targets, perturbations_per_eval=16)
    assert torch.equal(peer[:, 0], peer[:, 2])  # one window over all channels
    ours = occlusion(model, x, window=window, stride=stride, baseline=baseline)
    torch.testing.assert_close(ours, normalise(peer[:, 0]), atol=1e-5, rtol=0)
