"""Frozen-feature evaluation (`vitkit probe`): features extracted once and cached on disk, then kNN, linear
probes, logistic regression and few-shot episodes, compared across backbones in one report. The protocols
themselves are pure functions in `vitkit.evaluation` (knn, linear, fewshot)."""

from .backbones import Backbone, resolve
from .cache import FeatureCache, weights_hash
from .features import extract, feature_sets, select
from .report import write_all
from .run import PROTOCOLS, ProbeOptions, run_probe

__all__ = ["PROTOCOLS", "Backbone", "FeatureCache", "ProbeOptions", "extract", "feature_sets", "resolve",
           "run_probe", "select", "weights_hash", "write_all"]
