"""`vitkit trust`: how far a trained classifier can be trusted, in one report.

1. predictions of the validation and test splits (and of every corrupted and OOD set), collected once;
2. calibration on test before and after temperature scaling fitted on validation;
3. split conformal prediction calibrated on validation, evaluated on test, per score and alpha;
4. the corruption sweep: accuracy, ECE and conformal coverage per corruption and severity, and the mean
   corruption error against a named baseline model;
5. OOD detection: MSP, max-logit, energy, Mahalanobis and deep-kNN scores (fitted on training features),
   AUROC and FPR at 95% TPR per OOD set;
6. explanations of a fixed set of test images by every method the family takes, and their faithfulness
   (deletion / insertion areas against random maps).

Nothing is selected on test: the temperature and the conformal thresholds come from the validation split.
The algorithms are pure functions in `vitkit.evaluation` (calibration, conformal, ood, explanations,
faithfulness); this module only gathers the data they run on.
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import build_dataset
from ..data.base import SPLIT_SEED, stratified_split
from ..data.corruptions import list_corruptions
from ..data.datasets import corrupt_dataset
from ..evaluation import calibration, conformal, ood
from ..evaluation.explanations import check_method, explain, supported_methods
from ..evaluation.faithfulness import faithfulness_report
from .baseline import Baseline, resolve_baseline
from .predictions import Predictions
from .sets import default_ood, held_out_classes, ood_set, sweep_subset

SEVERITIES = (1, 2, 3, 4, 5)
SWEEP_ALPHA = 0.1  # the conformal level reported per corruption


@dataclass
class TrustOptions:
    data: str | None = None  # default: the dataset the checkpoint was trained on
    val_split: float | int | None = None  # default: the training run's
    alphas: tuple[float, ...] = (0.2, 0.1, 0.05, 0.01)
    conformal_scores: tuple[str, ...] = ("lac", "aps", "raps")
    corruptions: Sequence[str] | None = None  # None: all; empty skips the sweep
    severities: tuple[int, ...] = SEVERITIES
    sweep_images: int | None = 2000  # test images per corruption and severity (None: all)
    baseline: str = "pixels"  # the mean corruption error's reference: "pixels" or a model directory
    ood: Sequence[str] | None = None  # None: default_ood(); empty skips OOD
    knn_k: int = 50
    explain_methods: Sequence[str] | None = None  # None: every method the family supports; empty skips
    explain_images: int = 32
    faithfulness_steps: int = 20
    batch_size: int = 256
    seed: int = 0
    progress: bool = True
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        for alpha in self.alphas:
            conformal.check_alpha(alpha)
        if self.corruptions is not None:
            unknown = [c for c in self.corruptions if c not in list_corruptions()]
            if unknown:
                raise ValueError(f"unknown corruption(s) {unknown}; expected some of {', '.join(list_corruptions())}")
        bad = [s for s in self.severities if s not in SEVERITIES]
        if bad or not self.severities:
            raise ValueError(f"severities {list(self.severities)}: each must be 1-5")
        if self.sweep_images is not None and self.sweep_images < 1:
            raise ValueError(f"sweep_images must be >= 1 or None (all test images), got {self.sweep_images}")
        if self.explain_images < 1:
            raise ValueError(f"explain_images must be >= 1, got {self.explain_images}")


class _Context:
    """The model, its data and its predictions: what every section reads."""

    def __init__(self, checkpoint: str, opts: TrustOptions, out: Path, log, progress_factory):
        from ..data.transforms import saved_model_eval_params
        from ..efficiency.optimize import load_optimized

        self.model = load_optimized(checkpoint).eval()
        meta = getattr(self.model, "metadata", None) or {}
        self.data = opts.data or meta.get("dataset")
        if not self.data:
            raise ValueError(f"{checkpoint} does not record the dataset it was trained on: give --data")
        self.classes = meta.get("classes") if opts.data in (None, meta.get("dataset")) else None
        val_split = opts.val_split if opts.val_split is not None else meta.get("val_split")
        self.val = build_dataset(self.data, "val", val_split=val_split, classes=self.classes)
        self.test = build_dataset(self.data, "test", classes=self.classes)
        self.train = build_dataset(self.data, "train", val_split=val_split, classes=self.classes)
        self.info = self.test.info
        if self.model.num_classes != self.info.num_classes:
            raise ValueError(f"{checkpoint} predicts {self.model.num_classes} classes but {self.data} has "
                             f"{self.info.num_classes}" + (f" (classes {self.classes})" if self.classes else "")
                             + ": expected the dataset the checkpoint was trained on")
        names = meta.get("class_names")
        if names and list(names) != list(self.info.class_names):
            raise ValueError(f"{checkpoint} was trained on classes {names}, but {self.data} has "
                             f"{list(self.info.class_names)}: expected the same classes in the same order")
        self.transform = saved_model_eval_params(self.model.input_spec, meta, self.info.mean, self.info.std)
        self.predictions = Predictions(self.model, self.transform, out / "predictions", opts.batch_size, log,
                                       progress_factory)


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature


def calibration_section(val: dict, test: dict) -> dict:
    temperature = calibration.fit_temperature(val["logits"], val["labels"], split="val")
    scaled = _scaled(test["logits"], temperature)
    return {
        "temperature": temperature,
        "before": calibration.calibration_report(test["logits"], test["labels"]).to_dict(),
        "after": calibration.calibration_report(scaled, test["labels"]).to_dict(),
        "reliability_before": calibration.reliability(test["logits"], test["labels"]),
        "reliability_after": calibration.reliability(scaled, test["labels"]),
    }


def conformal_section(val: dict, test: dict, temperature: float, opts: TrustOptions) -> dict:
    """Per score, one row per alpha; on temperature-scaled logits (the sets' guarantee holds either way, and
    calibrated probabilities give APS/RAPS smaller sets). Also the class-conditional variant where every
    class has enough validation images for the alpha."""
    val_logits, test_logits = _scaled(val["logits"], temperature), _scaled(test["logits"], temperature)
    report = conformal.conformal_report(val_logits, val["labels"], test_logits, test["labels"], alphas=opts.alphas,
                                        scores=opts.conformal_scores, seed=opts.seed)
    rows = {score: [{"alpha": alpha, **values} for alpha, values in per_alpha.items()]
            for score, per_alpha in report.items()}
    per_class = min(int((val["labels"] == c).sum()) for c in range(val_logits.shape[1]))
    feasible = tuple(a for a in opts.alphas if math.ceil((per_class + 1) * (1 - a)) <= per_class)
    classwise = {}
    if feasible:
        report = conformal.conformal_report(val_logits, val["labels"], test_logits, test["labels"], alphas=feasible,
                                            scores=opts.conformal_scores, seed=opts.seed, class_conditional=True)
        classwise = {score: [{"alpha": alpha, **values["classwise"]} for alpha, values in per_alpha.items()]
                     for score, per_alpha in report.items()}
    return {"scores": rows, "class_conditional": classwise, "val_images_per_class_min": per_class}


def corruption_section(ctx: _Context, opts: TrustOptions, temperature: float, val: dict, baseline: Baseline,
                       progress_factory) -> dict:
    names = list(list_corruptions() if opts.corruptions is None else opts.corruptions)
    subset = sweep_subset(ctx.test, opts.sweep_images)
    val_scaled = _scaled(val["logits"], temperature)
    threshold = conformal.conformal_threshold(conformal.label_scores(val_scaled, val["labels"], "lac"), SWEEP_ALPHA)

    def measure(preds: dict) -> dict:
        logits = _scaled(preds["logits"], temperature)
        sets = conformal.prediction_sets(conformal.class_scores(logits, "lac"), threshold)
        return {"top1": float((logits.argmax(1) == preds["labels"]).double().mean()),
                "ece": calibration.ece(logits, preds["labels"]),
                "coverage": conformal.coverage(sets, preds["labels"]),
                "set_size": conformal.mean_set_size(sets)}

    clean = measure(ctx.predictions.of("test" if subset is ctx.test else f"test[{len(subset)}]", subset))
    clean["baseline_top1"] = baseline.top1(subset)
    rows = []
    tick = progress_factory("corruption sweep", len(names) * len(opts.severities))  # one step per set
    for name in names:
        for severity in opts.severities:
            corrupted = corrupt_dataset(subset, name, severity, opts.seed)
            row = {"corruption": name, "severity": severity,
                   **measure(ctx.predictions.of(f"{name}:{severity}[{len(subset)}]", corrupted, False)),
                   "baseline_top1": baseline.top1(corrupted)}
            rows.append(row)
            tick(len(subset))
    ce, relative = {}, {}
    for name in names:
        mine = [1 - r["top1"] for r in rows if r["corruption"] == name]
        base = [1 - r["baseline_top1"] for r in rows if r["corruption"] == name]
        ce[name] = sum(mine) / max(sum(base), 1e-12)
        base_drop = sum(e - (1 - clean["baseline_top1"]) for e in base)
        relative[name] = sum(e - (1 - clean["top1"]) for e in mine) / base_drop if base_drop > 0 else float("nan")
    finite = [v for v in relative.values() if np.isfinite(v)]
    return {"images": len(subset), "alpha": SWEEP_ALPHA, "baseline": baseline.name, "clean": clean, "rows": rows,
            "ce": ce, "mce": float(np.mean(list(ce.values()))), "relative_ce": relative,
            "relative_mce": float(np.mean(finite)) if finite else float("nan"),
            "mean_corrupted_top1": float(np.mean([r["top1"] for r in rows]))}


def logit_scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"msp": ood.msp(logits), "max_logit": ood.max_logit(logits), "energy": ood.energy(logits)}


def ood_sets(ctx: _Context, opts: TrustOptions) -> dict:
    """The OOD image sets by spec, built before anything runs, so a bad spec fails at once."""
    specs = list(default_ood(ctx.info, bool(held_out_classes(_dataset_classes(ctx), ctx.classes)))
                 if opts.ood is None else opts.ood)
    return {spec: ood_set(spec, ctx.data, ctx.test, ctx.classes, opts.seed) for spec in specs}


def ood_section(ctx: _Context, opts: TrustOptions, test: dict, sets: dict) -> dict:
    if not sets:
        return {}
    train = ctx.predictions.of("train", ctx.train)
    stats = ood.fit_mahalanobis(train["pooled"], train["labels"], num_classes=ctx.info.num_classes)
    k = min(opts.knn_k, len(train["labels"]))

    def scores(preds: dict) -> dict[str, torch.Tensor]:
        return {**logit_scores(preds["logits"]), "mahalanobis": ood.mahalanobis_score(stats, preds["pooled"]),
                "knn": ood.knn_score(train["pooled"], preds["pooled"], k=k)}

    in_scores = scores(test)
    out_scores, curves = {}, {}
    for spec, images in sets.items():
        out_scores[spec] = scores(ctx.predictions.of(f"ood:{spec}", images))
        curves[spec] = {name: [t.tolist() for t in ood.roc_curve(in_scores[name], out_scores[spec][name])]
                        for name in in_scores}
    return {"sets": {spec: len(images) for spec, images in sets.items()}, "k": k,
            "metrics": ood.ood_report(in_scores, out_scores), "roc": curves}


def _dataset_classes(ctx: _Context) -> int:
    return build_dataset(ctx.data, "test").info.num_classes if ctx.classes else ctx.info.num_classes


def _explain_methods(ctx: _Context, opts: TrustOptions) -> list[str]:
    if opts.explain_methods is None:
        return supported_methods(ctx.model)
    for method in opts.explain_methods:
        check_method(ctx.model, method)
    return list(opts.explain_methods)


def explanation_section(ctx: _Context, opts: TrustOptions, methods: list[str]) -> tuple[dict, dict]:
    if not methods:
        return {}, {}
    images, labels, raw = _explain_batch(ctx, opts.explain_images)
    maps = {method: explain(ctx.model, images, method, labels).detach() for method in methods}
    faith = faithfulness_report(ctx.model, images, labels, maps, steps=opts.faithfulness_steps, seed=opts.seed)
    return ({"images": len(labels), "methods": methods, "faithfulness": faith},
            {"raw": raw, "labels": labels, "maps": maps})


def _explain_batch(ctx: _Context, count: int):
    """A fixed, class-stratified set of test images, transformed for the model, with their labels (the
    class each explanation is for) and the raw uint8 images (for the grid)."""
    from ..data.transforms import eval_transform
    from .predictions import match_channels

    labels_all = np.asarray(ctx.test.targets)
    count = min(count, len(labels_all))
    index = stratified_split(labels_all, count / len(labels_all), SPLIT_SEED, exact=count)[1]
    raw = torch.stack([ctx.test[i][0] for i in index])
    t = ctx.transform
    images = eval_transform(match_channels(raw, ctx.model.input_spec.in_chans), t["size"], t["crop_pct"], t["mean"],
                            t["std"])
    return images, torch.as_tensor(labels_all[index]), raw


def run_trust(checkpoint: str, out: str | Path, opts: TrustOptions | None = None, log=print) -> tuple[dict, dict]:
    """The report's results (JSON-ready) and the tensors its figures need."""
    from ..training.progress import Progress

    opts = opts or TrustOptions()
    out = Path(out)
    bars: list[Progress] = []

    def progress_factory(name: str, steps: int):
        bar = Progress(steps, name, enabled=opts.progress)
        bars.append(bar)
        return bar.update

    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        seconds[name] = round(now - clock[0], 2)
        clock[0] = now

    try:
        ctx = _Context(checkpoint, opts, out, log, progress_factory)
        for alpha in opts.alphas:  # bad alphas, methods and OOD specs fail before any forward pass
            try:
                conformal.conformal_threshold(torch.zeros(len(ctx.val)), alpha)
            except ValueError as err:
                raise ValueError(f"conformal sets calibrate on the validation split of {ctx.data}: {err}") from None
        methods = _explain_methods(ctx, opts)
        sets = ood_sets(ctx, opts)
        val, test = ctx.predictions.of("val", ctx.val), ctx.predictions.of("test", ctx.test)
        results = {"report": "vitkit trust", "checkpoint": str(checkpoint), "data": ctx.data, "classes": ctx.classes,
                   "class_names": list(ctx.info.class_names), "val_images": len(ctx.val),
                   "test_images": len(ctx.test),
                   "test_top1": float((test["logits"].argmax(1) == test["labels"]).double().mean())}
        lap("predictions")
        results["calibration"] = calibration_section(val, test)
        temperature = results["calibration"]["temperature"]
        results["conformal"] = conformal_section(val, test, temperature, opts)
        lap("calibration and conformal")
        results["corruptions"] = {}
        if opts.corruptions is None or len(opts.corruptions):
            baseline = resolve_baseline(opts.baseline, ctx)
            lap("baseline")
            results["corruptions"] = corruption_section(ctx, opts, temperature, val, baseline, progress_factory)
            lap("corruptions")
        results["ood"] = ood_section(ctx, opts, test, sets)
        lap("ood")
        results["explanations"], figures = explanation_section(ctx, opts, methods)
        lap("explanations")
        results["forward_passes"] = ctx.predictions.computed
        results["seconds"] = {**seconds, "total": round(sum(seconds.values()), 2)}
        return results, figures
    finally:
        for bar in bars:
            bar.close()
