"""The reference model of the mean corruption error (Hendrycks & Dietterich, 2019: CE of a model on a
corruption = its errors summed over severities / the baseline's; they used AlexNet on ImageNet-C).

- `pixels` (default): multinomial logistic regression on the raw pixels (normalised with the dataset's
  statistics), fitted on the training split with C chosen on the validation split. Always available,
  deterministic, no network: a fixed yardstick for any model on the same data, as AlexNet was.
- a model directory: another trained model (e.g. the previous version of yours).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from ..evaluation.linear import fit_logistic
from ..probe.features import pixel_features

PIXELS = "pixels"
PIXEL_CS = (0.01, 0.1, 1.0)
PIXEL_MAX_ITER = 100


@dataclass
class Baseline:
    name: str
    predict: object  # dataset -> predicted labels (N,)

    def top1(self, dataset) -> float:
        predicted = self.predict(dataset)
        return float((predicted == torch.as_tensor(dataset.targets)).double().mean())


def _pixel_baseline(ctx) -> Baseline:
    info = ctx.info

    def pixels(dataset) -> torch.Tensor:
        return pixel_features(dataset, info.mean, info.std)["pooled"]

    train, val = pixels(ctx.train).double(), pixels(ctx.val).double()
    train_y, val_y = torch.as_tensor(ctx.train.targets), torch.as_tensor(ctx.val.targets)
    best, fit = None, None
    for C in PIXEL_CS:  # increasing C, each fit warm-started from the previous one; validation picks C
        fit = fit_logistic(train, train_y, info.num_classes, C, PIXEL_MAX_ITER, init=fit)
        accuracy = float(((val @ fit[0].T + fit[1]).argmax(1) == val_y).double().mean())
        if best is None or accuracy > best[0]:
            best = (accuracy, C, fit)
    _, C, (weight, bias) = best
    name = f"logistic regression on raw pixels (C={C:g} of {list(PIXEL_CS)}, chosen on validation)"
    return Baseline(name, lambda dataset: (pixels(dataset).double() @ weight.T + bias).argmax(1))


def _model_baseline(directory: str, ctx) -> Baseline:
    from ..data.transforms import saved_model_eval_params
    from ..efficiency.optimize import load_optimized
    from .predictions import Predictions

    model = load_optimized(directory).eval()
    if model.num_classes != ctx.info.num_classes:
        raise ValueError(f"baseline {directory} predicts {model.num_classes} classes, the data has "
                         f"{ctx.info.num_classes}: expected a model of the same classes")
    meta = getattr(model, "metadata", None) or {}
    transform = saved_model_eval_params(model.input_spec, meta, ctx.info.mean, ctx.info.std)
    preds = Predictions(model, transform, ctx.predictions.cache.root, ctx.predictions.batch_size, ctx.predictions.log)
    counter = iter(range(1_000_000))
    return Baseline(str(directory), lambda dataset: preds.of(f"baseline{next(counter)}", dataset)["logits"].argmax(1))


def resolve_baseline(spec: str, ctx) -> Baseline:
    if spec == PIXELS:
        return _pixel_baseline(ctx)
    if Path(spec).is_dir():
        return _model_baseline(spec, ctx)
    raise ValueError(f"--baseline {spec!r}: expected 'pixels' or a trained model directory")
