"""Training losses: soft-target cross entropy and DeiT-style distillation."""

import torch
import torch.nn.functional as F
from torch import nn


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class DistillationLoss(nn.Module):
    """`hard`: CE to the teacher's argmax (DeiT; through the distillation head when the student has one).
    `soft`: KL to the teacher's temperature-softened distribution. Mixed with the label loss by alpha."""

    def __init__(self, teacher: nn.Module | None, mode: str = "none", alpha: float = 0.5, tau: float = 1.0):
        super().__init__()
        self.teacher, self.mode, self.alpha, self.tau = teacher, mode, alpha, tau

    def forward(self, images: torch.Tensor, outputs, target: torch.Tensor) -> torch.Tensor:
        cls_logits, dist_logits = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        base = soft_target_cross_entropy(cls_logits, target)
        if self.mode == "none":
            return base
        with torch.no_grad():
            teacher_logits = self.teacher(images).float()
        if self.mode == "hard":
            distill = F.cross_entropy(dist_logits.float(), teacher_logits.argmax(dim=-1))
        else:
            t = self.tau
            distill = F.kl_div(
                F.log_softmax(dist_logits.float() / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                reduction="batchmean", log_target=True,
            ) * (t * t)
        return (1 - self.alpha) * base + self.alpha * distill
