"""Saliency maps for every vitkit family: which pixels made the model predict a class.

Every method returns (B, H, W) maps at the input resolution: computed on the model's token / feature grid,
upsampled bilinearly, and min-max normalised per image to [0, 1] (a constant map becomes zeros). The
target class per image defaults to the predicted one.

- Grad-CAM family on a `feature_info` layer (any family): Grad-CAM (Selvaraju et al., ICCV 2017),
  Grad-CAM++ (Chattopadhay et al., WACV 2018), XGrad-CAM (Fu et al., BMVC 2020), HiResCAM (Draelos &
  Carin, 2020). The token-to-grid layout comes from the model: the hooked module's output is matched
  against the (B, C, H, W) map `forward_intermediates` gives for the same index.
- Gradient x attention relevance (Chefer, Gur & Wolf, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021): ViT family only.
- Attention rollout (Abnar & Zuidema, ACL 2020): ViT family only, class-agnostic.
- Occlusion (Zeiler & Fergus, ECCV 2014): any model; the drop of the target's softmax probability.

Which image rows read the relevance (rollout, Chefer): the class token's row (with the distillation token's
averaged in for distilled DeiT) when the head reads the class token; the mean over the patch-token rows
otherwise (global average pooling, attention pooling), as the head then reads every patch.

pytorch-grad-cam would be the usual library for the CAM methods, but it imports torchvision, which does not
import with vitkit's CPU torch build, and every ViT needs a hand-written `reshape_transform` there; here the
layout is derived from the backbone contract instead. captum's `Occlusion` computes the same occlusion map
and is the test peer for it (tests/evaluation/test_explanations.py), not a dependency.
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.evaluation.attention_maps import attention_modules, attention_rollout, capture_attention
from vitkit.layers.attention import Attention
from vitkit.models._protocol import TokenSequence

CAM_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam")
_EPS = 1e-7


# ----- shared conventions --------------------------------------------------------------------
def _targets(logits: torch.Tensor, targets: torch.Tensor | int | None) -> torch.Tensor:
    """(B,) class indices: the predicted class per image by default, an int for every image."""
    if targets is None:
        return logits.argmax(dim=-1)
    return torch.as_tensor(targets, device=logits.device).long().expand(logits.shape[0])


def _to_image_map(grid_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W): bilinear upsampling, then min-max normalisation per image to [0, 1]."""
    maps = F.interpolate(grid_map[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return _normalise(maps)


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    scale = torch.where(high > low, high - low, torch.ones_like(high))
    return ((flat - low[:, None]) / scale[:, None]).view_as(maps)


# ----- which method can explain which model --------------------------------------------------
def _refusal(model: nn.Module, method: str) -> str | None:
    """Why `method` cannot explain `model`, or None when it can."""
    if method == "occlusion":
        return None
    if method in CAM_METHODS:
        if not getattr(model, "feature_info", None) or not hasattr(model, "forward_intermediates"):
            return "it has no feature_info / forward_intermediates (vitkit's backbone contract) to take a layer from"
        return None
    # rollout and chefer: attention over one token sequence
    modules = attention_modules(model)
    if not modules:
        return "it has no attention modules (an attention-free network)"
    others = sorted({type(m).__name__ for m in modules if not isinstance(m, Attention)})
    if others:
        return (f"its {', '.join(others)} modules give per-window (B, windows, heads, N, N) maps, not (B, heads, N, N) "
                f"maps over one token sequence")
    if not isinstance(model, TokenSequence):
        return "it is not a token-sequence model (num_prefix_tokens, blocks, embed: vitkit's TokenSequence)"
    return None


def supported_methods(model: nn.Module) -> list[str]:
    """The names in EXPLAINERS that can explain `model`."""
    return [method for method in EXPLAINERS if _refusal(model, method) is None]


def check_method(model: nn.Module, method: str) -> None:
    """A ValueError naming why `method` cannot explain `model` (and what can), or an unknown method."""
    if method not in EXPLAINERS:
        raise ValueError(f"unknown explanation method {method!r}; expected one of {', '.join(EXPLAINERS)}")
    reason = _refusal(model, method)
    if reason is not None:
        raise ValueError(f"{method} cannot explain {type(model).__name__}: {reason}; "
                         f"methods that can: {', '.join(supported_methods(model))}")


# ----- Grad-CAM family -----------------------------------------------------------------------
def _layouts(activation: torch.Tensor, shape: torch.Size) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The ways `activation` can be read as the (B, C, H, W) map of `shape`: as it is, from (B, H, W, C),
    or from (B, P + H*W, C) tokens after P prefix tokens."""
    B, C, H, W = shape
    layouts = []
    if activation.shape == shape:
        layouts.append(lambda t: t)
    if activation.shape == (B, H, W, C):
        layouts.append(lambda t: t.permute(0, 3, 1, 2))
    if activation.ndim == 3 and activation.shape[0] == B and activation.shape[2] == C and activation.shape[1] >= H * W:
        prefix = activation.shape[1] - H * W
        layouts.append(lambda t: t[:, prefix:].transpose(1, 2).reshape(B, C, H, W))
    return layouts


def _grid_layout(activation: torch.Tensor, reference: torch.Tensor, module: str) -> Callable:
    """The layout that reads the hooked `activation` as `reference`, the NCHW map forward_intermediates gives;
    when shapes alone are ambiguous (C == H == W) the one whose values agree with it."""
    layouts = _layouts(activation, reference.shape)
    if not layouts:
        raise ValueError(f"module {module!r} gives {tuple(activation.shape)}, which is neither (B, C, H, W), "
                         f"(B, H, W, C) nor (B, prefix + H*W, C) for the map {tuple(reference.shape)} "
                         f"forward_intermediates returns for it")
    return min(layouts, key=lambda read: (read(activation.detach()) - reference).abs().max().item())


def _cam(activation: torch.Tensor, grad: torch.Tensor, method: str) -> torch.Tensor:
    """(B, C, h, w) activations and gradients of the target score -> (B, h, w) class activation map."""
    if method == "hirescam":  # element-wise gradient x activation, no spatial averaging of the gradient
        return (grad * activation).sum(dim=1).relu()
    if method == "gradcam":
        weights = grad.mean(dim=(2, 3))
    elif method == "gradcam++":  # alpha from the second/third-order terms (exp(score) closed form)
        grad2 = grad.pow(2)
        alpha = grad2 / (2 * grad2 + activation.sum(dim=(2, 3), keepdim=True) * grad2 * grad + _EPS)
        weights = (torch.where(grad != 0, alpha, 0.0) * grad.relu()).sum(dim=(2, 3))
    else:  # xgradcam: activation-normalised weights
        weights = (grad * activation).sum(dim=(2, 3)) / (activation.sum(dim=(2, 3)) + _EPS)
    return (weights[:, :, None, None] * activation).sum(dim=1).relu()


def _default_cam_layer(model: nn.Module) -> int:
    """The last layer unless the head reads only the class token: the last block's patch outputs never reach
    it (their gradient is zero), so the block before (what pytorch-grad-cam's `blocks[-1].norm1` sees)."""
    reads_class_token = getattr(model, "global_pool", None) == "token" and getattr(model, "num_prefix_tokens", 0)
    return -2 if reads_class_token and len(model.feature_info) > 1 else -1


def grad_cam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | int | None = None,
             method: str = "gradcam", layer: int | None = None) -> torch.Tensor:
    """(B, H, W) Grad-CAM-family maps in [0, 1] from layer `model.feature_info[layer]`.

    `method`: "gradcam", "gradcam++", "xgradcam" or "hirescam". `layer` indexes `feature_info`; by default
    the last one, or the second to last for a ViT whose head reads the class token (see
    `_default_cam_layer`). The activation is that module's output (first tensor of a tuple), captured with a
    forward hook, and its gradient of the target logit comes from torch.autograd.grad.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {', '.join(CAM_METHODS)}, got {method!r}")
    check_method(model, method)
    info = model.feature_info
    layer = _default_cam_layer(model) if layer is None else layer
    if not -len(info) <= layer < len(info):
        raise ValueError(f"layer {layer} is out of range for the {len(info)} entries of feature_info")
    index = layer % len(info)
    name = info[index].module
    module = dict(model.named_modules()).get(name)
    if module is None:
        raise ValueError(f"feature_info[{index}].module {name!r} is not a module of {type(model).__name__}")
    with torch.no_grad():
        reference = model.forward_intermediates(images, indices=[index], output_fmt="NCHW", intermediates_only=True)[0]

    captured = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(images.detach().requires_grad_(True))  # a graph even for frozen parameters
            targets = _targets(logits, targets)
            score = logits.gather(1, targets[:, None]).sum()
            grad = torch.autograd.grad(score, captured[-1])[0]
    finally:
        handle.remove()
    read = _grid_layout(captured[-1], reference, name)
    grad = read(grad).float()
    if not grad.any():
        raise ValueError(f"the target scores do not depend on {name!r} (zero gradient); use an earlier layer")
    cam = _cam(read(captured[-1].detach()).float(), grad, method)
    return _to_image_map(cam, images.shape[-2:])


# ----- attention-based maps (ViT family) -----------------------------------------------------
def _patch_relevance(model: nn.Module, relevance: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(B, N, N) token-to-token relevance -> (B, H, W) image map: the rows the head reads (module docstring),
    over the patch tokens, laid out on the patch grid."""
    prefix = model.num_prefix_tokens
    if getattr(model, "global_pool", None) == "token":
        readers = 2 if getattr(model, "head_dist", None) is not None else 1  # class (+ distillation) token
        rows = relevance[:, :readers, prefix:].mean(dim=1)
    else:
        rows = relevance[:, prefix:, prefix:].mean(dim=1)
    reduction = model.feature_info[-1].reduction
    h, w = (-(-side // reduction) for side in images.shape[-2:])
    if h * w != rows.shape[1]:
        raise ValueError(f"{rows.shape[1]} patch tokens do not fill the {h}x{w} patch grid (token merging/pruning?)")
    return _to_image_map(rows.reshape(-1, h, w), images.shape[-2:])


def attention_rollout_map(model: nn.Module, images: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, H, W) attention rollout maps in [0, 1] (class-agnostic), ViT family only."""
    check_method(model, "rollout")
    with torch.no_grad(), capture_attention(model) as maps:
        model(images)
    return _patch_relevance(model, attention_rollout(maps, head_fusion), images)


def chefer_relevance(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | int | None = None
                     ) -> torch.Tensor:
    """(B, H, W) gradient x attention relevance maps in [0, 1] (Chefer et al. 2021), ViT family only.

    Starting from R = I, every block adds mean_heads(clamp(dA * A, min=0)) @ R, with A its attention
    probabilities and dA their gradient of the target logit (explicit attention: capture_attention(grad=True)).
    """
    check_method(model, "chefer")
    with torch.enable_grad(), capture_attention(model, grad=True) as maps:
        logits = model(images.detach().requires_grad_(True))  # a graph even for frozen parameters
        targets = _targets(logits, targets)
        grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), maps)
    # R - I, accumulated without the identity: R <- R + cam @ R becomes D <- D + cam @ D + cam. The identity
    # adds nothing to the rows read (the class token's own column is not a patch; with mean pooling it adds
    # the same 1/N to every patch column, which normalisation removes), but next to it float32 would round
    # away relevance as small as a fresh model's (~1e-8).
    delta = torch.zeros(images.shape[0], maps[0].shape[-1], maps[0].shape[-1], device=images.device)
    for attn, grad in zip(maps, grads, strict=True):
        cam = (grad * attn).clamp(min=0).mean(dim=1).detach().float()
        delta = delta + cam @ delta + cam
    return _patch_relevance(model, delta, images)


# ----- occlusion -----------------------------------------------------------------------------
def _window_starts(size: int, window: int, stride: int) -> torch.Tensor:
    """Window offsets along one side, as captum's Occlusion: the last window may stick out (it is clipped)."""
    return torch.arange(0, -(-(size - window) // stride) * stride + 1, stride)


def occlusion(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | int | None = None,
              window: int | None = None, stride: int | None = None, baseline: float | torch.Tensor = 0.0,
              batch_size: int = 64) -> torch.Tensor:
    """(B, H, W) occlusion maps in [0, 1]: per pixel, the drop in the target's softmax probability when a
    `window` x `window` square around it is replaced by `baseline` (a value, or a tensor broadcastable to one
    image (C, H, W)), averaged over the windows that cover the pixel.

    `window` defaults to the total stride of the last feature map (`feature_info[-1].reduction`: the patch
    size of a ViT, 32 for ConvNeXt / Swin), so one window hides what one cell of the coarsest map sees (at
    most the image side);
    `stride` defaults to `window` (no overlap). Windows are placed as captum's `Occlusion` places them.
    `batch_size` occluded images go through the model at once.
    """
    B, _, H, W = images.shape
    if window is None:
        if not getattr(model, "feature_info", None):
            raise ValueError(f"{type(model).__name__} has no feature_info to take a default window from; "
                             f"pass window=")
        window = model.feature_info[-1].reduction
    window = min(window, H, W)
    stride = window if stride is None else stride
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in [1, window={window}] so that every pixel is occluded, got {stride}")
    rows = torch.arange(H, device=images.device)
    cols = torch.arange(W, device=images.device)
    row_masks = torch.stack([(rows >= t) & (rows < t + window) for t in _window_starts(H, window, stride)])
    col_masks = torch.stack([(cols >= s) & (cols < s + window) for s in _window_starts(W, window, stride)])
    masks = (row_masks[:, None, :, None] & col_masks[None, :, None, :]).flatten(0, 1)  # (windows, H, W)
    baseline = torch.as_tensor(baseline, dtype=images.dtype, device=images.device)

    with torch.no_grad():
        probs = model(images).softmax(dim=-1)
        targets = _targets(probs, targets)
        drops = torch.zeros(B, H, W, device=images.device)
        pairs = torch.cartesian_prod(torch.arange(B), torch.arange(len(masks)))  # (image, window)
        for chunk in pairs.split(batch_size):
            image, win = chunk.unbind(dim=1)
            occluded = torch.where(masks[win, None], baseline, images[image])
            occluded_probs = model(occluded).softmax(dim=-1).gather(1, targets[image, None])[:, 0]
            drop = probs[image, targets[image]] - occluded_probs
            drops.index_add_(0, image.to(images.device), drop[:, None, None] * masks[win])
    return _normalise(drops / masks.sum(dim=0))


# ----- registry ------------------------------------------------------------------------------
def _rollout(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | int | None = None) -> torch.Tensor:
    """Attention rollout under the common explainer signature; rollout does not depend on the target."""
    return attention_rollout_map(model, images)


EXPLAINERS: dict[str, Callable[..., torch.Tensor]] = {
    "rollout": _rollout,
    **{method: partial(grad_cam, method=method) for method in CAM_METHODS},
    "chefer": chefer_relevance,
    "occlusion": occlusion,
}


def explain(model: nn.Module, images: torch.Tensor, method: str, targets: torch.Tensor | int | None = None
            ) -> torch.Tensor:
    """(B, H, W) saliency maps in [0, 1] from the method named `method` (a key of EXPLAINERS), with its
    defaults; refuses, with the methods that can, a model the method cannot explain."""
    check_method(model, method)
    return EXPLAINERS[method](model, images, targets=targets)
