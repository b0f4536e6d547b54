"""DINO (Caron et al., 2021): self-distillation without labels. A student sees 2 global and N local crops of
each image and learns to match, crop for crop, the teacher's output on the other global crops; the teacher
is an exponential moving average of the student. Centering (a running mean of the teacher's outputs
subtracted before its sharp softmax) and the teacher's low temperature keep the pair from collapsing; or,
as DINOv2 (`centering: sinkhorn_knopp`), the teacher's targets are balanced over the prototypes within each
batch by a few Sinkhorn-Knopp iterations (no center then). DINOv2's KoLeo term (`koleo_weight`) optionally spreads
the student's pooled features.

Any family with a pooled feature (`forward_head(..., pre_logits=True)`) works: ViT (local crops need
`dynamic_img_size: true`, since they are smaller) and ConvNeXt. `best/` and `final/` hold the teacher's
backbone, the one DINO evaluates."""

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...data.augment import apply_op, normalize, random_hflip, random_resized_crop, to_unit_float
from ..distributed import all_reduce_
from .base import Objective, objective_options
from .features import FeatureMonitor, collapse_reason

MIN_BATCH = 16  # the center (or Sinkhorn-Knopp's balance) is taken over each batch: fewer images make it noise
UNIFORM_FRACTION = 0.98  # teacher entropy above this share of log(out_dim): a uniform teacher
ONE_HOT_ENTROPY = 0.05  # nats: every image on one prototype
CENTERINGS = ("centering", "sinkhorn_knopp")


@dataclass
class DINOConfig:
    """`objective_args` of `objective: dino` (DINO's names; sizes as fractions of the dataset's image size)."""

    out_dim: int = 1024  # prototypes
    hidden_dim: int = 512
    bottleneck_dim: int = 128
    local_crops: int = 4
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_size: float = 0.43  # of the global crop's side (96 / 224 in DINO), rounded to the input multiple
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_frac: float = 0.3  # of the training steps
    center_momentum: float = 0.9
    centering: str = "centering"  # or "sinkhorn_knopp" (DINOv2): the teacher's targets balanced over prototypes
    sinkhorn_iterations: int = 3
    koleo_weight: float = 0.0  # DINOv2's KoLeo term on the student's pooled features (0.1 there): spreads them
    momentum_teacher: float = 0.996  # -> 1 on a cosine schedule
    freeze_last_layer_epochs: float = 1.0
    knn_bank: int = 5000
    knn_k: int = 20
    knn_temperature: float = 0.07

    def __post_init__(self):
        self.global_scale, self.local_scale = tuple(self.global_scale), tuple(self.local_scale)
        if self.centering not in CENTERINGS:
            raise ValueError(f"dino centering must be one of {list(CENTERINGS)}, got {self.centering!r}")
        for name in ("out_dim", "hidden_dim", "bottleneck_dim", "knn_bank", "knn_k", "sinkhorn_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"dino {name} must be >= 1, got {getattr(self, name)}")
        if self.local_crops < 0:
            raise ValueError(f"dino local_crops must be >= 0, got {self.local_crops}")
        for name in ("global_scale", "local_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"dino {name} must be [min, max] with 0 < min <= max <= 1, "
                                 f"got {list(getattr(self, name))}")
        if not 0 < self.local_size <= 1:
            raise ValueError(f"dino local_size is a fraction of the global crop's side: local crops larger than "
                             f"global ones make no sense; expected a value in (0, 1], got {self.local_size}")
        if self.koleo_weight < 0:
            raise ValueError(f"dino koleo_weight must be >= 0, got {self.koleo_weight}")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"dino {name} must be > 0, got {getattr(self, name)}")
        for name in ("center_momentum", "momentum_teacher", "warmup_teacher_temp_frac"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"dino {name} must be in [0, 1), got {getattr(self, name)}")


def dino_config(args: dict) -> DINOConfig:
    return objective_options(DINOConfig, args, "dino")


class DINOHead(nn.Module):
    """MLP (3 layers, GELU) to a bottleneck, L2-normalised, then weight-normalised prototypes whose norms are
    fixed at 1 (DINO's `norm_last_layer`): the output is a cosine similarity to each prototype."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return x @ F.normalize(self.prototypes, dim=-1).T


class DINOModule(nn.Module):
    """Student and teacher (backbone + head each) and the center: what the trainer optimises (the student's
    parameters; the teacher's require no gradient), checkpoints and wraps in DDP."""

    def __init__(self, backbone: nn.Module, head: DINOHead):
        super().__init__()
        self.student, self.student_head = backbone, head
        self.teacher = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, head.prototypes.shape[0]))

    @staticmethod
    def _embed(backbone: nn.Module, head: nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V, C, H, W) crops of one size -> ((V, B, out_dim) head outputs, (V, B, D) pooled features)."""
        b, v = crops.shape[:2]
        features = backbone.forward_head(backbone.forward_features(crops.flatten(0, 1)), pre_logits=True)
        return (head(features).unflatten(0, (b, v)).transpose(0, 1),
                features.unflatten(0, (b, v)).transpose(0, 1))

    def forward(self, global_crops: torch.Tensor, local_crops: torch.Tensor):
        """(student outputs (2 + N, B, K), teacher outputs (2, B, K), the student's pooled features of the
        global crops (2, B, D))."""
        student, features = self._embed(self.student, self.student_head, global_crops)
        if local_crops.shape[1]:
            student = torch.cat([student, self._embed(self.student, self.student_head, local_crops)[0]])
        with torch.no_grad():
            self.teacher.eval()  # stochastic depth and dropout off in the teacher, as DINO's
            teacher = self._embed(self.teacher, self.teacher_head, global_crops)[0]
        return student, teacher, features


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate (DINOv2): minus the mean log distance from each L2-normalised
    feature (N, D) to its nearest neighbour in the batch; lower when the features spread out."""
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):  # fp32: bf16 cosines blur neighbours
        dots = x @ x.T
        dots.fill_diagonal_(-2)  # not its own neighbour
        nearest = dots.argmax(dim=1)
    return -torch.log((x - x[nearest]).norm(dim=-1) + eps).mean()


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """DINOv2's teacher targets: (N, K) logits -> (N, K) rows that sum to 1, alternately rescaled so that
    every prototype takes an equal share of the batch (all processes under DDP; each micro-batch under
    gradient accumulation) and every sample one unit. Balanced from the first step, where centering waits
    for the teacher to leave uniform."""
    logits = logits.float()
    high, neg_low = all_reduce_(torch.stack([logits.max(), -logits.min()]), "max")
    # a constant shift cancels in the first division; shifted to the midpoint and clamped, exp() stays in
    # float32's normal range even summed over a large batch (cosine logits at DINO's temperatures need no clamp)
    q = torch.exp(((logits - (high - neg_low) / 2) / temperature).clamp(-60, 60)).T  # (K, N)
    prototypes, samples = q.shape[0], all_reduce_(q.new_tensor(float(q.shape[1])))
    tiny = torch.finfo(q.dtype).tiny  # logits far apart can underflow a whole row: divide it by tiny, not 0
    q /= all_reduce_(q.sum())
    for _ in range(iterations):
        q /= all_reduce_(q.sum(dim=1, keepdim=True)).clamp_min(tiny)
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)
        q /= samples
    return (q * samples).T


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """DINO's teacher momentum: `base` at step 0, rising to 1 on a half cosine at the last step."""
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)) + 1) / 2


class DINO(Objective):
    name = "dino"
    selection_metric = "knn_top1"

    def __init__(self, cfg: DINOConfig, bank_set, num_classes: int, batch_size: int, seed: int = 0):
        if batch_size < MIN_BATCH:
            raise ValueError(f"DINO centers the teacher's outputs with the mean over each batch: batch_size "
                             f"{batch_size} is too small for that; expected at least {MIN_BATCH}")
        self.cfg, self.bank_set, self.num_classes, self.seed = cfg, bank_set, num_classes, seed
        self.step, self.total_steps, self.steps_per_epoch = 0, 1, 1
        self._teacher_sum, self._teacher_count = None, 0
        self.last_terms: dict[str, float] = {}

    def setup(self, augment):
        super().setup(augment)
        self.img_size, self.mean, self.std = augment.img_size, augment.mean, augment.std
        self.monitor = FeatureMonitor(self.bank_set, self.eval_tf, self.num_classes, self.cfg.knn_bank,
                                      self.cfg.knn_k, self.cfg.knn_temperature, self.seed)

    def build(self, backbone: nn.Module) -> nn.Module:
        spec = backbone.input_spec
        multiple = spec.size_multiple
        self.local_px = max(multiple, round(self.img_size * self.cfg.local_size / multiple) * multiple)
        if self.local_px > self.img_size:
            raise ValueError(f"dino local crops ({self.local_px}px) would be larger than the global ones "
                             f"({self.img_size}px); expected local_size < 1")
        if self.cfg.local_crops and self.local_px != self.img_size and spec.fixed_size:
            raise ValueError(f"DINO's {self.local_px}px local crops need a backbone that takes other sizes than "
                             f"{spec.img_size[0]}px; {type(backbone).__name__} as built takes one size (for a ViT "
                             "set model_kwargs: {dynamic_img_size: true}), or set local_crops: 0")
        head = DINOHead(backbone.num_features, self.cfg.out_dim, self.cfg.hidden_dim, self.cfg.bottleneck_dim)
        return DINOModule(backbone, head)

    def backbone(self, module: nn.Module) -> nn.Module:
        return module.teacher

    def _augment(self, x: torch.Tensor, size: int, scale, generator: torch.Generator) -> torch.Tensor:
        x = random_resized_crop(x, size, scale, (3 / 4, 4 / 3), generator=generator)
        x = random_hflip(x, 0.5, generator=generator)
        for op, strength in (("Brightness", 0.4), ("Contrast", 0.4)):
            magnitude = (torch.rand(len(x), generator=generator) * 2 - 1) * strength
            x = apply_op(x, op, magnitude)
        solarize = torch.rand(len(x), generator=generator) < 0.2
        x = torch.where(solarize.view(-1, 1, 1, 1), apply_op(x, "Solarize", torch.full((len(x),), 0.5)), x)
        return normalize(x, self.mean, self.std)

    def views(self, images, targets, generator):
        x = to_unit_float(images)
        globals_ = torch.stack([self._augment(x, self.img_size, self.cfg.global_scale, generator) for _ in range(2)], 1)
        crops = [self._augment(x, self.local_px, self.cfg.local_scale, generator) for _ in range(self.cfg.local_crops)]
        size = self.local_px
        locals_ = torch.stack(crops, 1) if crops else x.new_zeros(len(x), 0, x.shape[1], size, size)
        return globals_, locals_

    def start_step(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        self.step, self.total_steps, self.steps_per_epoch = step, total_steps, steps_per_epoch

    def teacher_temp(self) -> float:
        warmup = int(self.cfg.warmup_teacher_temp_frac * self.total_steps)
        if self.step >= warmup:
            return self.cfg.teacher_temp
        start, end = self.cfg.warmup_teacher_temp, self.cfg.teacher_temp
        return start + (end - start) * self.step / warmup

    def loss(self, module, views):
        student, teacher, features = module(*views)
        core = module.module if hasattr(module, "module") else module  # DDP wraps it
        student_log = F.log_softmax(student.float() / self.cfg.student_temp, dim=-1)
        if self.cfg.centering == "sinkhorn_knopp":
            teacher_p = sinkhorn_knopp(teacher.flatten(0, 1), self.teacher_temp(),
                                       self.cfg.sinkhorn_iterations).view_as(teacher)
        else:
            teacher_p = F.softmax((teacher.float() - core.center) / self.teacher_temp(), dim=-1)
        total, pairs = 0.0, 0
        for t in range(teacher_p.shape[0]):
            for s in range(student_log.shape[0]):
                if s == t:  # a crop is not its own target
                    continue
                total = total + torch.sum(-teacher_p[t] * student_log[s], dim=-1).mean()
                pairs += 1
        loss = total / pairs
        koleo = sum(koleo_loss(crop) for crop in features) if self.cfg.koleo_weight else None
        with torch.no_grad():  # collapse diagnostics: teacher entropy and KL(teacher || student)
            entropy = -(teacher_p * teacher_p.clamp_min(1e-12).log()).sum(-1).mean()
            kl = loss - entropy  # cross-entropy minus the teacher's entropy
            if self.cfg.centering == "centering":
                batch_sum = teacher.float().sum(dim=(0, 1))
                self._teacher_sum = batch_sum if self._teacher_sum is None else self._teacher_sum + batch_sum
                self._teacher_count += teacher.shape[0] * teacher.shape[1]
        terms = {"teacher_entropy": entropy.detach(), "kl": kl.detach()}
        if koleo is not None:  # DINOv2: per global crop, within each process's batch under DDP
            terms["koleo"] = koleo.detach()
            loss = loss + self.cfg.koleo_weight * koleo
        self.last_terms = {name: value.item() for name, value in terms.items()}
        return {"loss": loss, **terms}

    def before_update(self, module: nn.Module) -> None:
        if self.step < self.cfg.freeze_last_layer_epochs * self.steps_per_epoch:
            module.student_head.prototypes.grad = None  # DINO: the prototypes wait out the first epoch

    @torch.no_grad()
    def after_step(self, module, step, total_steps):
        m = cosine_momentum(self.cfg.momentum_teacher, step - 1, total_steps)
        for student, teacher in ((module.student, module.teacher), (module.student_head, module.teacher_head)):
            for s, t in zip(student.state_dict().values(), teacher.state_dict().values(), strict=True):
                if t.dtype.is_floating_point:
                    t.lerp_(s.detach(), 1 - m)
                else:
                    t.copy_(s)
        if self.cfg.centering != "centering":  # Sinkhorn-Knopp: no center to follow
            return
        # center: momentum mean of the teacher's outputs over the whole global batch (all processes)
        total = all_reduce_(torch.cat([self._teacher_sum, self._teacher_sum.new_tensor([self._teacher_count])]))
        batch_center = (total[:-1] / total[-1]).unsqueeze(0)
        module.center.mul_(self.cfg.center_momentum).add_(batch_center, alpha=1 - self.cfg.center_momentum)
        self._teacher_sum, self._teacher_count = None, 0

    def evaluate(self, model, dataset, split):
        return self.monitor.evaluate(model, dataset)

    def collapsed(self, metrics):
        """The backbone's features (rank, spread), or the teacher's outputs at the last step: entropy at
        log(out_dim) is a uniform teacher (nothing to learn from), near 0 one prototype for every image."""
        entropy, uniform = self.last_terms.get("teacher_entropy"), math.log(self.cfg.out_dim)
        if entropy is not None and entropy > UNIFORM_FRACTION * uniform:
            return (f"teacher entropy {entropy:.3f} ~ log(out_dim) = {uniform:.3f}: the teacher's outputs are "
                    "uniform (try a lower teacher_temp, a larger batch or more epochs)")
        if entropy is not None and entropy < ONE_HOT_ENTROPY:
            return f"teacher entropy {entropy:.3f} ~ 0: one prototype for every image"
        return collapse_reason(metrics)
