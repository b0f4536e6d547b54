"""Parameter groups from a model's `group_matcher` (timm's convention): the stem, then blocks or stages
in order, then everything unmatched (the head). Layer-wise learning-rate decay and freezing use these
ids, so they work for every family without knowing its parameter names."""

import re

from torch import nn

MERGE_WITH_PREVIOUS = 99999  # a key ending in this joins the group before it (timm: the final norm)


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Parameter name -> layer id: 0 for the stem, 1.. for blocks/stages in order, last for the head."""
    matcher = model.group_matcher(coarse=False)
    keys = {name: _key(name, matcher) for name, _ in model.named_parameters()}
    ordered = sorted({k for k in keys.values() if k is not None})
    ids, layer = {}, -1
    for key in ordered:
        if layer < 0 or key[-1] != MERGE_WITH_PREVIOUS:
            layer += 1
        ids[key] = layer
    head = layer + 1
    return {name: head if key is None else ids[key] for name, key in keys.items()}


def _key(name: str, matcher: dict) -> tuple | None:
    for group, spec in matcher.items():
        rules = [(spec, None)] if isinstance(spec, str) else spec
        for pattern, suffix in rules:
            match = re.match(pattern, name)
            if match is None:
                continue
            if group == "stem":
                return (-1,)
            numbers = tuple(int(g) for g in match.groups() if g is not None)
            return numbers + tuple(suffix) if suffix is not None else numbers
    return None
