"""Classification metrics over a dataset: top-1, top-5, loss, per-class accuracy, confusion matrix."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ClassificationReport:
    top1: float
    top5: float
    loss: float
    num_samples: int
    per_class_accuracy: list[float]
    confusion: np.ndarray  # rows: true class, columns: predicted
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "top1": self.top1, "top5": self.top5, "loss": self.loss, "num_samples": self.num_samples,
            "per_class_accuracy": dict(zip(self.class_names, self.per_class_accuracy, strict=True)),
            "confusion": self.confusion.tolist(),
        }

    def table(self) -> str:
        width = max([len(n) for n in self.class_names] + [10])
        lines = [f"top-1 {self.top1 * 100:.2f}%  top-5 {self.top5 * 100:.2f}%  loss {self.loss:.4f}  "
                 f"({self.num_samples} images)", f"{'class':<{width}}  accuracy  count"]
        counts = self.confusion.sum(axis=1)
        for name, acc, n in zip(self.class_names, self.per_class_accuracy, counts, strict=True):
            lines.append(f"{name:<{width}}  {acc * 100:7.2f}%  {n:5d}")
        return "\n".join(lines)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, batches, num_classes: int, class_names=None,
                        amp: bool = False) -> ClassificationReport:
    """`batches` yields (normalised images, integer labels)."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # an onnxruntime wrapper has no parameters
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, top5_hits, total = 0.0, 0, 0
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        k = min(5, num_classes)
        top5_hits += (logits.topk(k, dim=-1).indices == labels[:, None]).any(dim=-1).sum().item()
        confusion += torch.bincount(labels.cpu() * num_classes + logits.argmax(-1).cpu(),
                                    minlength=num_classes**2).reshape(num_classes, num_classes)
        total += len(labels)
    if total == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    confusion_np = confusion.numpy()
    counts = confusion_np.sum(axis=1)
    per_class = np.divide(np.diag(confusion_np), counts, out=np.zeros(num_classes), where=counts > 0)
    return ClassificationReport(
        top1=float(np.trace(confusion_np) / total), top5=top5_hits / total, loss=loss_sum / total,
        num_samples=total, per_class_accuracy=per_class.tolist(), confusion=confusion_np,
        class_names=list(class_names) if class_names else [str(i) for i in range(num_classes)],
    )


def save_confusion_png(report: ClassificationReport, path: str | Path, cell: int = 36) -> None:
    """Row-normalised confusion matrix as a PNG, drawn with Pillow (no plotting library needed)."""
    from PIL import Image, ImageDraw

    from ..weights import atomic_write

    n = len(report.class_names)
    label_w, top = max(60, 7 * max(len(s) for s in report.class_names) + 10), 30
    img = Image.new("RGB", (label_w + n * cell + 10, top + n * cell + label_w), "white")
    draw = ImageDraw.Draw(img)
    rows = report.confusion / np.maximum(report.confusion.sum(axis=1, keepdims=True), 1)
    draw.text((label_w, 8), f"confusion (rows: true, cols: predicted), top-1 {report.top1 * 100:.2f}%", fill="black")
    for i in range(n):
        draw.text((4, top + i * cell + cell // 3), report.class_names[i][:20], fill="black")
        for j in range(n):
            shade = int(255 * (1 - rows[i, j]))
            x0, y0 = label_w + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            if report.confusion[i, j]:
                ink = "black" if shade > 120 else "white"
                draw.text((x0 + 3, y0 + cell // 3), str(report.confusion[i, j]), fill=ink)
    for j, name in enumerate(report.class_names):
        label = Image.new("RGB", (label_w - 4, 14), "white")
        ImageDraw.Draw(label).text((0, 0), name[:20], fill="black")
        img.paste(label.rotate(90, expand=True), (label_w + j * cell + cell // 3, top + n * cell + 4))
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
