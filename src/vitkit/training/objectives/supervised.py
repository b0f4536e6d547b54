"""Supervised classification (DeiT recipe): RandAugment, mixup/cutmix, label smoothing, and optional
distillation from a teacher (hard through the distillation token, or soft)."""

from torch import nn

from ...data.batches import eval_batches
from ...data.transforms import TrainAugment
from ...evaluation.classification import evaluate_classifier
from ..losses import DistillationLoss
from .base import Objective


class Supervised(Objective):
    name = "supervised"
    selection_metric = "top1"
    saves_confusion = True

    def __init__(self, num_classes: int, class_names, teacher: nn.Module | None, distill: str = "none",
                 alpha: float = 0.5, tau: float = 1.0, amp: bool = False, workers: int = 0):
        self.num_classes, self.class_names = num_classes, class_names
        self.criterion = DistillationLoss(teacher, distill, alpha, tau)
        self.distill, self.amp, self.workers = distill, amp, workers

    def setup(self, augment):
        super().setup(augment)
        self.train_aug = TrainAugment(augment, self.num_classes)

    def build(self, backbone: nn.Module) -> nn.Module:
        if self.distill == "hard" and getattr(backbone, "head_dist", None) is not None:
            backbone.set_distilled_training(True)
        return backbone

    def views(self, images, targets, generator):
        return self.train_aug(images, targets, generator)  # (images, soft targets)

    def loss(self, module, views):
        x, y = views
        return {"loss": self.criterion(x, module(x), y)}

    def evaluate(self, model, dataset, split):
        # validation follows the run's amp; the test split runs in float32: the number `vitkit eval` reproduces
        batches = eval_batches(dataset, self.eval_tf, workers=self.workers)
        report = evaluate_classifier(model, batches, self.num_classes, self.class_names, self.amp and split == "val")
        return {"top1": report.top1, "top5": report.top5, "loss": report.loss, "report": report}
