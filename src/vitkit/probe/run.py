"""`vitkit probe`: frozen-feature protocols over several backbones, on features cached on disk.

Pinned protocols (each selects only on the validation split, carved from the training data, and reports
the test split once for what it selected):
- knn: DINO's (cosine, exp(s/T) weighted vote, T=0.07) with the training split as the bank, several k at
  once; k selected on validation, and k=20 reported as the pinned DINO number;
- linear: DINOv2's grid (learning rates x {last 1, last 4 blocks} x {class token, + patch mean}) trained
  in one pass over cached features, optional BatchNorm before the layer (MAE's);
- logreg: full-batch L-BFGS logistic regression over a sweep of regularisation strengths;
- fewshot: N-way K-shot nearest-centroid episodes on CL2N features of the test split (centred with the
  training split's mean), mean and 95% confidence interval.
"""

import time
from dataclasses import asdict, dataclass, field

import torch

from ..data import build_dataset
from .backbones import Backbone, resolve
from .cache import FEATURE_DTYPES, FeatureCache, as_read, as_stored, dataset_hash, weights_hash
from .features import check_blocks, extract, feature_sets, has_class_token, num_blocks, pixel_features, select

DEFAULT_BLOCKS = 4
PROTOCOLS = ("knn", "linear", "logreg", "fewshot")
DEFAULT_PROTOCOLS = ("knn", "linear", "fewshot")
SPLITS_NEEDED = {"knn": ("train", "val", "test"), "linear": ("train", "val", "test"),
                 "logreg": ("train", "val", "test"), "fewshot": ("train", "test")}


@dataclass
class ProbeOptions:
    data: str
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    val_split: float | int | None = None  # the dataset's default
    blocks: int | None = None  # last blocks cached, offered to the linear grid as last 1 / last n (None: up to 4)
    tokens: str = "pooled"  # the feature kNN, logreg and few-shot use
    ks: tuple[int, ...] = (10, 20, 100, 200)
    temperature: float = 0.07
    # DINOv2's grid reaches 0.1 x batch/256 over 12,500 steps; features with a small norm (a random network's
    # mean-pooled tokens) need larger steps in the few thousand a CPU run takes, and diverged heads lose anyway
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
    linear_epochs: int = 10
    batchnorm: bool = False
    Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    logreg_max_iter: int = 200  # L-BFGS iterations per C (warm-started): bounds a sweep on 50k+ rows to minutes
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    episodes: int = 600
    feature_dtype: str = "float32"
    batch_size: int = 256
    seed: int = 0
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.protocols = tuple(self.protocols)
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ValueError(f"unknown protocol(s) {unknown or '(none given)'}; expected a comma-separated list of "
                             f"{', '.join(PROTOCOLS)}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature dtype {self.feature_dtype!r} is not one of {', '.join(FEATURE_DTYPES)}")
        for name in ("blocks", "linear_epochs", "logreg_max_iter", "ways", "queries", "episodes", "batch_size"):
            value = getattr(self, name)
            if name == "blocks" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"k values must be >= 1, got {list(self.ks)}")


class Extractor:
    """Features of one backbone per split: from the cache, else one forward pass (then cached)."""

    def __init__(self, backbone: Backbone, opts: ProbeOptions, cache: FeatureCache, log):
        self.backbone, self.opts, self.cache, self.log = backbone, opts, cache, log
        self.weights = weights_hash(backbone.model) if backbone.model is not None else "pixels"
        self.forward_images = 0
        self.sources: dict[str, dict] = {}
        self._splits: dict[str, dict] = {}
        self.blocks = 0  # raw pixels
        if backbone.model is not None:
            self.blocks = opts.blocks or min(DEFAULT_BLOCKS, num_blocks(backbone.model))
            check_blocks(backbone.model, self.blocks, backbone.label)
            if "cls" in opts.tokens and not has_class_token(backbone.model):
                raise ValueError(f"{backbone.label} has no class token: use --tokens patch_mean or pooled, not "
                                 f"{opts.tokens!r}")
        elif opts.tokens != "pooled":
            raise ValueError(f"raw pixels have no tokens: use --tokens pooled, not {opts.tokens!r}")

    def split(self, name: str) -> dict[str, torch.Tensor]:
        if name in self._splits:
            return self._splits[name]
        opts, backbone = self.opts, self.backbone
        dataset = build_dataset(opts.data, name, val_split=opts.val_split)
        key = {"weights": self.weights, "optimize": backbone.optimize, "dataset": opts.data, "split": name,
               "val_split": opts.val_split, "data_hash": dataset_hash(dataset), "num_images": len(dataset),
               "transform": backbone.transform, "blocks": self.blocks,
               "dtype": opts.feature_dtype}
        features = self.cache.load(key, len(dataset))
        source = "cache"
        if features is None:
            start, source = time.perf_counter(), "computed"
            features = self._compute(dataset, name)
            path = self.cache.save(key, features, opts.feature_dtype)
            features = as_read(as_stored(features, opts.feature_dtype))  # what later runs read (float16 included)
            seconds = time.perf_counter() - start
            self.log(f"{backbone.label}: {name} features of {len(dataset)} images in {seconds:.0f} s -> {path}")
        self.sources[name] = {"source": source, "images": len(dataset), "path": str(self.cache.path(key))}
        self._splits[name] = features
        return features

    def _compute(self, dataset, split: str) -> dict[str, torch.Tensor]:
        from ..data.transforms import eval_transform
        from ..training.progress import Progress

        backbone, opts = self.backbone, self.opts
        t = backbone.transform
        if backbone.model is None:
            return pixel_features(dataset, t["mean"], t["std"])
        batches = -(-len(dataset) // opts.batch_size)
        progress = Progress(batches, f"{backbone.label} {split}", enabled=opts.progress)

        def counted(images: int) -> None:
            self.forward_images += images
            progress.update(images)

        transform = lambda images: eval_transform(images, t["size"], t["crop_pct"], t["mean"], t["std"])  # noqa: E731
        try:
            return extract(backbone.model, dataset, transform, self.blocks, opts.batch_size, counted)
        finally:
            progress.close()


def _labels_of(features: dict, split: str, label: str) -> torch.Tensor:
    labels = features["labels"]
    if len(labels) and (labels.min() < 0):
        raise ValueError(f"{label}: the {split} split has no labels (label {labels.min().item()}); the supervised "
                         "protocols need a labelled dataset")
    return labels


def probe_backbone(backbone: Backbone, opts: ProbeOptions, cache: FeatureCache, num_classes: int, log) -> dict:
    from ..evaluation.fewshot import fewshot_eval
    from ..evaluation.knn import knn_classify
    from ..evaluation.linear import linear_probe_grid, logistic_regression_sweep

    ex = Extractor(backbone, opts, cache, log)
    result = {"backbone": backbone.label, "kind": backbone.kind, "weights_sha256": ex.weights, "blocks": ex.blocks,
              "transform": backbone.transform, "optimize": backbone.optimize}
    splits = {s: ex.split(s) for p in opts.protocols for s in SPLITS_NEEDED[p]}
    labels = {s: _labels_of(f, s, backbone.label) for s, f in splits.items()}
    chosen = {s: select(f, opts.tokens, ex.blocks if opts.tokens != "pooled" else 1) for s, f in splits.items()}
    if "knn" in opts.protocols:
        bank = chosen["train"]
        for k in opts.ks:
            if k > len(bank):
                raise ValueError(f"k={k} is larger than the kNN bank ({len(bank)} training images of {opts.data}); "
                                 f"expected k values up to {len(bank)}")
        val = knn_classify(bank, labels["train"], chosen["val"], num_classes, opts.ks, opts.temperature)
        val_top1 = {k: (pred == labels["val"]).float().mean().item() for k, pred in val.items()}
        best_k = max(opts.ks, key=lambda k: (val_top1[k], -k))  # ties: the smaller k
        pinned = sorted({best_k, 20} & set(opts.ks))
        test = knn_classify(bank, labels["train"], chosen["test"], num_classes, pinned, opts.temperature)
        test_top1 = {k: (pred == labels["test"]).float().mean().item() for k, pred in test.items()}
        result["knn"] = {"tokens": opts.tokens, "temperature": opts.temperature, "bank_images": len(bank),
                         "val_top1": {str(k): v for k, v in val_top1.items()}, "selected_k": best_k,
                         "test_top1": test_top1[best_k], "test_top1_k20": test_top1.get(20)}
    if "linear" in opts.protocols:
        sets = {s: feature_sets(splits[s], (1, ex.blocks)) for s in ("train", "val", "test")}
        grid = linear_probe_grid(sets["train"], labels["train"], sets["val"], labels["val"], sets["test"],
                                 labels["test"], num_classes, lrs=opts.lrs, epochs=opts.linear_epochs,
                                 batchnorm=opts.batchnorm, seed=opts.seed)
        result["linear"] = grid.to_dict()
    if "logreg" in opts.protocols:
        sweep = logistic_regression_sweep(chosen["train"], labels["train"], chosen["val"], labels["val"],
                                          chosen["test"], labels["test"], num_classes, Cs=opts.Cs,
                                          max_iter=opts.logreg_max_iter)
        result["logreg"] = sweep.to_dict()
    if "fewshot" in opts.protocols:
        center = chosen["train"].mean(dim=0)
        episodes = fewshot_eval(chosen["test"], labels["test"], opts.ways, opts.shots, opts.queries, opts.episodes,
                                opts.seed, center=center)
        result["fewshot"] = [e.to_dict() for e in episodes]
    result["features"] = ex.sources
    result["forward_images"] = ex.forward_images
    return result


def run_probe(specs: list[str], opts: ProbeOptions, cache: FeatureCache | None = None, log=print) -> dict:
    """Every backbone of `specs` through every protocol of `opts`; the report's data (`report.write_all`)."""
    if not specs:
        raise ValueError("give at least one backbone: a model directory, random:DIR_OR_NAME, a model name or pixels")
    cache = cache or FeatureCache(log=log)
    info = build_dataset(opts.data, "test").info
    if info.num_classes < 2:
        raise ValueError(f"{opts.data} has {info.num_classes} class: the probes need labelled data with 2 or more "
                         "classes")
    backbones = [resolve(spec, info, opts.seed) for spec in specs]  # every name checked before any work
    for b in backbones:
        if b.model is not None and b.model.input_spec.in_chans != info.in_chans:
            raise ValueError(f"{b.label} takes {b.model.input_spec.in_chans} input channel(s); {opts.data} has "
                             f"{info.in_chans}")
    results = []
    for backbone in backbones:
        start = time.perf_counter()
        results.append({**probe_backbone(backbone, opts, cache, info.num_classes, log),
                        "seconds": round(time.perf_counter() - start, 2)})
    options = {k: v for k, v in asdict(opts).items() if k not in ("progress", "extra")}
    return {"data": opts.data, "num_classes": info.num_classes, "options": options,
            "cache_dir": str(cache.root), "results": results}
