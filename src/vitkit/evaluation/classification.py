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


MAX_CONFUSION_CLASSES = 100  # above this the full matrix is unreadable: only the most-confused classes are drawn
CONFUSED_CLASSES_SHOWN = 30
CONFUSION_SCAN_CELLS = 1 << 22  # matrix cells copied at a time while looking for the largest confusions
LABEL_CHARS = 20


def most_confused_classes(confusion: np.ndarray, k: int) -> np.ndarray:
    """Indices (ascending) of `k` classes, taken from the largest off-diagonal counts down.

    Classes still missing once the confusions run out (or repeat classes) are those with the most errors
    either way. The matrix is scanned in row blocks, so the extra memory stays bounded for any class count.
    """
    n = len(confusion)
    k = min(k, n)
    step = max(1, CONFUSION_SCAN_CELLS // max(n, 1))
    counts, cells = np.empty(0, np.int64), np.empty(0, np.int64)
    for start in range(0, n, step):
        block = np.array(confusion[start:start + step], dtype=np.int64)
        local = np.arange(len(block))
        block[local, local + start] = 0
        top = np.argpartition(block, -min(k, block.size), axis=None)[-min(k, block.size):]
        counts = np.concatenate([counts, block.ravel()[top]])
        cells = np.concatenate([cells, top + start * n])
        order = np.lexsort((cells, -counts))[:k]  # largest first, ties by position: deterministic
        counts, cells = counts[order], cells[order]
    chosen: dict[int, None] = {}  # insertion-ordered set
    for count, cell in zip(counts.tolist(), cells.tolist(), strict=True):
        if count <= 0 or len(chosen) >= k:
            break
        for c in divmod(cell, n):
            if len(chosen) < k:
                chosen.setdefault(c, None)
    if len(chosen) < k:
        errors = confusion.sum(axis=0) + confusion.sum(axis=1) - 2 * np.diagonal(confusion)
        for c in np.argsort(-errors, kind="stable").tolist():
            if len(chosen) >= k:
                break
            chosen.setdefault(c, None)
    return np.array(sorted(chosen), dtype=np.int64)


def save_confusion_png(report: ClassificationReport, path: str | Path, cell: int = 36) -> None:
    """Row-normalised confusion matrix as a PNG, drawn with Pillow (no plotting library needed).

    Above MAX_CONFUSION_CLASSES classes only the CONFUSED_CLASSES_SHOWN classes in the largest confusions are
    drawn (shading still relative to each true class's total), so the image stays readable and bounded in size.
    """
    from PIL import Image, ImageDraw

    from ..weights import atomic_write

    n = len(report.class_names)
    if n > MAX_CONFUSION_CLASSES:
        shown = most_confused_classes(report.confusion, CONFUSED_CLASSES_SHOWN)
        title = f"the {len(shown)} most-confused of {n} classes (rows: true, cols: predicted)"
    else:
        shown = np.arange(n)
        title = "confusion (rows: true, cols: predicted)"
    names = [report.class_names[c] for c in shown.tolist()]
    confusion = report.confusion[np.ix_(shown, shown)]
    totals = np.asarray(report.confusion[shown].sum(axis=1), dtype=np.float64)  # all predictions, not just shown
    rows = confusion / np.maximum(totals, 1)[:, None]
    m = len(shown)
    label_w, top = max(60, 7 * min(LABEL_CHARS, max(len(s) for s in names)) + 10), 30
    img = Image.new("RGB", (label_w + m * cell + 10, top + m * cell + label_w), "white")
    draw = ImageDraw.Draw(img)
    draw.text((label_w, 8), f"{title}, top-1 {report.top1 * 100:.2f}%", fill="black")
    for i in range(m):
        draw.text((4, top + i * cell + cell // 3), names[i][:LABEL_CHARS], fill="black")
        for j in range(m):
            shade = int(255 * (1 - rows[i, j]))
            x0, y0 = label_w + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            if confusion[i, j]:
                ink = "black" if shade > 120 else "white"
                draw.text((x0 + 3, y0 + cell // 3), str(confusion[i, j]), fill=ink)
    for j, name in enumerate(names):
        label = Image.new("RGB", (label_w - 4, 14), "white")
        ImageDraw.Draw(label).text((0, 0), name[:LABEL_CHARS], fill="black")
        img.paste(label.rotate(90, expand=True), (label_w + j * cell + cell // 3, top + m * cell + 4))
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
