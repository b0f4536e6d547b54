"""Bounds on untrusted config.json values, checked before a model is built.

A config.json is data from wherever the directory came from: the fields that decide how much memory the
model takes are bounded (the largest published models are well inside). Each family declares its own
integer fields (`Family.config_limits`) and any further check (`Family.check_config`)."""

import math
from typing import Any

COMMON_LIMITS = {"img_size": (1, 8192), "in_chans": (1, 1024), "num_classes": (0, 1_000_000)}
MAX_STAGES = 8


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def shown(value) -> str:
    """repr for an error message, cut short: a hostile value may be megabytes long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:50] + f"... ({len(text)} characters)"


def out_of_range(data: dict[str, Any], key: str, expected: str, source: str) -> ValueError:
    return ValueError(f"{source}: {key}={shown(data[key])} is out of range; expected {expected}")


def check_int_limits(data: dict[str, Any], limits: dict[str, tuple[int, int]], source: str,
                     optional: tuple[str, ...] = ()) -> None:
    """Each present key an integer in its range, or a list of at most MAX_STAGES of them (one per stage);
    the `optional` keys may also be None (the family's default)."""
    for key, (low, high) in limits.items():
        if key not in data or (key in optional and data[key] is None):
            continue
        value = data[key]
        values = value if isinstance(value, list | tuple) and 0 < len(value) <= MAX_STAGES else [value]
        if not all(is_int(v) and low <= v <= high for v in values):
            raise out_of_range(data, key, f"an integer from {low} to {high} (or one per stage, at most "
                                          f"{MAX_STAGES} stages)", source)


def check_mlp_ratio(data: dict[str, Any], source: str, most: float = 64.0) -> None:
    if "mlp_ratio" in data and not (is_number(data["mlp_ratio"]) and 0 < data["mlp_ratio"] <= most):
        raise out_of_range(data, "mlp_ratio", f"a number in (0, {most:g}]", source)
