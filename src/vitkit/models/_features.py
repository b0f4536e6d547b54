"""Helpers every family's model API shares: which blocks or stages `forward_intermediates` takes, its loop
over the blocks and the layout of a token model's outputs (NCHW maps or NLC tokens), fitting a checkpoint's
first convolution to another input channel count, and the stage-level model API of the hierarchical
families (ConvNeXt, Swin) and the class-attention head of CaiT and XCiT."""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def take_indices(num_blocks: int, indices: int | list[int] | tuple[int, ...] | None) -> tuple[set[int], int]:
    if indices is None:
        take = list(range(num_blocks))
    elif isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"indices={indices} must be between 1 and the number of blocks ({num_blocks})")
        take = list(range(num_blocks - indices, num_blocks))
    else:
        take = [i + num_blocks if i < 0 else i for i in indices]
        bad = [i for i, t in zip(indices, take, strict=True) if not 0 <= t < num_blocks]
        if bad:
            raise ValueError(f"block indices {bad} are out of range for a model with {num_blocks} blocks")
    return set(take), max(take)


def init_linear_(module: nn.Module) -> None:
    """timm's init of a new linear head: truncated normal(0.02) weight, zero bias; anything but an nn.Linear
    (an nn.Identity head) is left alone."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def checkpointing(owner: nn.Module) -> bool:
    """Whether `owner`'s blocks recompute their activations in the backward pass: `grad_checkpointing` set, in
    training mode, with gradients being recorded (under no_grad there is no backward pass to save memory for)."""
    return owner.grad_checkpointing and owner.training and torch.is_grad_enabled()


def run_block(owner: nn.Module, block: nn.Module, *args) -> torch.Tensor:
    """`block(*args)`, checkpointed when `checkpointing(owner)`."""
    return checkpoint(block, *args, use_reentrant=False) if checkpointing(owner) else block(*args)


def forward_blocks(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`stage.blocks(x)`, each block checkpointed when `checkpointing(stage)`."""
    if checkpointing(stage):
        for block in stage.blocks:
            x = run_block(stage, block, x)
        return x
    return stage.blocks(x)


def check_output_fmt(output_fmt: str) -> None:
    if output_fmt not in ("NCHW", "NLC"):
        raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")


def run_blocks(blocks, x: torch.Tensor, indices, run, final_norm, norm: bool, stop_early: bool,
               last_only: bool = False):
    """`forward_intermediates`' loop: `x` through `blocks` (each as `run(block, x)`), keeping the outputs of the
    blocks (or stages) `indices` names (`take_indices`), after `final_norm` when `norm` (with `last_only`, timm's
    rule for staged models: only the last stage's output gets it); with `stop_early` the blocks after the last
    one taken are skipped. Returns (x, intermediates)."""
    take, last = take_indices(len(blocks), indices)
    final = len(blocks) - 1
    intermediates = []
    for i, block in enumerate(blocks[: last + 1] if stop_early else blocks):
        x = run(block, x)
        if i in take:
            intermediates.append(final_norm(x) if norm and (i == final or not last_only) else x)
    return x, intermediates


def layout_token_intermediates(intermediates: list[torch.Tensor], num_prefix_tokens: int, grid: tuple[int, int],
                               output_fmt: str, return_prefix_tokens: bool = False) -> list:
    """Block outputs (B, prefix + h*w, D) of a token model as timm's `forward_intermediates` returns them: the
    patch tokens as NCHW maps of the (h, w) `grid` or as NLC tokens, each beside its prefix (class, register)
    tokens with `return_prefix_tokens`. Merged or pruned sequences have no grid: NLC only."""
    prefix = [y[:, :num_prefix_tokens] for y in intermediates]
    tokens = [y[:, num_prefix_tokens:] for y in intermediates]
    if output_fmt == "NCHW":
        h, w = grid
        if any(y.shape[1] != h * w for y in tokens):
            raise ValueError("token merging/pruning left fewer tokens than the patch grid, so they cannot be laid out "
                             "as NCHW maps; use output_fmt='NLC'")
        tokens = [y.reshape(y.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous() for y in tokens]
    return list(zip(tokens, prefix, strict=True)) if return_prefix_tokens else tokens


def adapt_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB patch-embedding weights to gray (sum) or to more channels (tiled, rescaled), as timm does."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def adapt_stem_channels(state_dict: dict[str, torch.Tensor], key: str, weight: torch.Tensor) -> None:
    """In place: `state_dict[key]`, the first convolution's weights, refit to `weight`'s input channels
    when the checkpoint was made for another count (same kernel size); anything else is left alone."""
    proj = state_dict.get(key)
    if proj is not None and proj.ndim == 4 and proj.shape[1] != weight.shape[1] and proj.shape[2:] == weight.shape[2:]:
        state_dict[key] = adapt_input_channels(proj, weight.shape[1])


class StagedModelMixin:
    """timm's model API for the hierarchical families (ConvNeXt, Swin), written once.

    Both keep their stages in one `nn.Sequential` and a norm after the last stage, and differ only in
    attribute names (`stages_attr`, `final_norm_attr`) and in how their head is rebuilt (`_reset_head`,
    which must validate `global_pool` before anything changes, so a refused pool leaves the model as it was).
    The class must also define `config` (with `num_classes`, `global_pool`) and a `head` with an `fc`."""

    stages_attr: str = "stages"
    final_norm_attr: str = "norm"

    def _reset_head(self, num_classes: int, global_pool: str | None) -> None:
        raise NotImplementedError

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop the stages after the last one `indices` needs (and the final norm / head) to save compute;
        returns the stage indices `forward_intermediates` will give."""
        stages = getattr(self, self.stages_attr)
        take, last = take_indices(len(stages), indices)
        setattr(self, self.stages_attr, stages[: last + 1])
        if prune_norm:
            setattr(self, self.final_norm_attr, nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return sorted(take)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for `num_classes` (0: no linear layer), optionally with another pooling; the config
        follows, so a saved model rebuilds with the new head."""
        self._reset_head(num_classes, global_pool)
        if global_pool is not None:
            self.config.global_pool = global_pool
        self.num_classes = self.config.num_classes = num_classes

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (training only)."""
        for stage in getattr(self, self.stages_attr):
            stage.grad_checkpointing = enable


class ClassAttentionHeadMixin:
    """timm's head API for models whose class token joins in class-attention blocks after the patch-token
    blocks (CaiT, XCiT), written once. The class must define `blocks`, `norm`, `embed_dim`, `config` (with
    `num_classes`, `global_pool` and a `check_pool` static method), `head`, and name its class-attention
    blocks in `class_blocks_attr`."""

    class_blocks_attr: str

    def _linear_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop blocks after the last one `indices` needs (and, as timm, the class-attention blocks with the
        head, whose output then is the normed tokens) to save compute."""
        take, last = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            setattr(self, self.class_blocks_attr, nn.ModuleList())
            self.reset_classifier(0, "")
        return sorted(take)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for `num_classes` (0: none, the pooled features come out); the config follows."""
        if global_pool is not None:
            type(self.config).check_pool(global_pool)
            self.global_pool = self.config.global_pool = global_pool
        self.num_classes = self.config.num_classes = num_classes
        self.head = self._linear_head(num_classes)
        init_linear_(self.head)

    def get_classifier(self) -> nn.Module:
        return self.head


class ConvStagesMixin(StagedModelMixin):
    """The rest of timm's model API for the families that are stem -> stages of NCHW maps -> `norm_pre` -> a head
    called as `head(x, pre_logits=...)` (ConvNeXt, MetaFormer, ResNet), written once."""

    stages_attr, final_norm_attr = "stages", "norm_pre"

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x.to(next(self.stem.parameters()).dtype))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_pre(self.stages(self._stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False, stop_early: bool = False):
        """Outputs of chosen stages as NCHW maps (timm: an int n takes the last n stages, a list those stages,
        None all). `norm` applies `norm_pre` to the last stage's map, as timm (an identity in these families'
        named configs)."""
        if output_fmt != "NCHW":
            raise ValueError(f"{type(self).__name__} gives NCHW maps only; output_fmt={output_fmt!r}")
        stop = stop_early or intermediates_only
        x, intermediates = run_blocks(self.stages, self._stem(x), indices, lambda stage, x: stage(x), self.norm_pre,
                                      norm, stop, last_only=True)
        if intermediates_only:
            return intermediates
        ran_all = not stop or take_indices(len(self.stages), indices)[1] == len(self.stages) - 1
        return (self.norm_pre(x) if ran_all else x), intermediates
