"""The optimization spec: `"tome:r=8,bf16"` -> [SpecItem("tome", {"r": 8}), SpecItem("bf16", {})].

Items are separated by commas, parameters by colons: `tome:r=13:schedule=decreasing`. Lists go in
brackets, `tome:r=[8,8,4]`, `evit:keep=0.7:blocks=[3,6,9]`. Every name and parameter is checked
before anything runs, and an unknown one gets the list of valid ones.
"""

from dataclasses import dataclass, field
from typing import Any


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _int_or_list(text: str) -> int | list[int]:
    return _int_list(text) if text.startswith("[") else int(text)


def _int_list(text: str) -> list[int]:
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError(f"expected a bracketed list such as [3,6,9], got {text!r}")
    return [int(v) for v in text[1:-1].split(",") if v.strip()]


# name -> {parameter: (parser, default, help)}
SPEC_ITEMS: dict[str, dict[str, tuple[Any, Any, str]]] = {
    "none": {},
    "tome": {
        "r": (_int_or_list, None, "tokens merged per block: an int or a per-block list [r0,r1,...]"),
        "schedule": (str, "constant", "constant or decreasing (1.5r down to 0.5r)"),
        "prop_attn": (_bool, True, "proportional attention (log token size added to the logits)"),
        "trace_source": (_bool, False, "track which patches each token holds (for merge maps)"),
    },
    "evit": {
        "keep": (float, None, "fraction of patch tokens kept at each pruning block, in (0, 1]"),
        "blocks": (_int_list, None, "blocks that prune, e.g. [3,6,9] (default: 1/4, 1/2, 3/4 of the depth)"),
    },
    "bf16": {},
    "int8": {
        "skip": (_int_list, [], "blocks whose linear layers stay float, e.g. [0,11]"),
        "head": (_bool, False, "quantize the classifier head too (default: keep it float)"),
    },
    "compile": {"mode": (str, "default", "torch.compile mode: default, reduce-overhead or max-autotune")},
}
REQUIRED = {"tome": ("r",), "evit": ("keep",)}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_values(name: str, params: dict[str, Any]) -> None:
    """Range checks that need no model (block indices are checked against the model when applied)."""
    if name == "tome":
        r = params["r"]
        if any(v < 0 for v in (r if isinstance(r, list) else [r])):
            raise ValueError(f"tome:r must be >= 0, got {r}")
        if params["schedule"] not in ("constant", "decreasing"):
            raise ValueError(f"tome:schedule must be constant or decreasing, got {params['schedule']!r}")
    elif name == "evit":
        if not 0 < params["keep"] <= 1:
            raise ValueError(f"evit:keep must be in (0, 1], got {params['keep']}")
        if params["blocks"] == []:
            raise ValueError("evit:blocks is empty; leave it out for the default blocks")
    elif name == "compile" and params["mode"] not in COMPILE_MODES:
        raise ValueError(f"compile:mode must be one of {', '.join(COMPILE_MODES)}; got {params['mode']!r}")


@dataclass
class SpecItem:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        given = [f"{k}={_format(v)}" for k, v in self.params.items() if v != SPEC_ITEMS[self.name][k][1]]
        return ":".join([self.name, *given])


def _format(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def valid_items_help() -> str:
    lines = []
    for name, params in SPEC_ITEMS.items():
        lines.append(f"  {name}" + "".join(f"\n      {p}: {h}" for p, (_, _, h) in params.items()))
    return "\n".join(lines)


def split_top_level(text: str, sep: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def parse_spec(spec: "str | list[SpecItem] | None") -> list[SpecItem]:
    """Parse and validate a spec. `None`, "" and "none" mean no optimization."""
    if spec is None:
        return []
    if isinstance(spec, list):
        return _check_items(spec)
    items = []
    for raw in split_top_level(spec.replace(" ", ""), ","):
        if not raw:
            continue
        name, *param_texts = split_top_level(raw, ":")
        name = name.lower()
        if name not in SPEC_ITEMS:
            raise ValueError(f"unknown spec item {name!r} in {spec!r}; valid items:\n{valid_items_help()}")
        allowed = SPEC_ITEMS[name]
        params = {}
        for text in param_texts:
            key, eq, value = text.partition("=")
            if key not in allowed:
                valid = ", ".join(allowed) or "none"
                raise ValueError(f"unknown parameter {key!r} for {name!r} in {spec!r}; valid parameters: {valid}")
            if not eq or not value:
                raise ValueError(f"parameter {key!r} of {name!r} needs a value, e.g. {key}=...")
            try:
                params[key] = allowed[key][0](value)
            except ValueError as err:
                raise ValueError(f"bad value for {name}:{key} in {spec!r}: {err}") from None
        if name != "none":
            items.append(SpecItem(name, params))
    return _check_items(items)


def _check_items(items: list[SpecItem]) -> list[SpecItem]:
    checked, seen = [], set()
    for item in items:
        if item.name not in SPEC_ITEMS:
            raise ValueError(f"unknown spec item {item.name!r}; valid items:\n{valid_items_help()}")
        if item.name in seen:
            raise ValueError(f"spec item {item.name!r} appears twice")
        seen.add(item.name)
        allowed = SPEC_ITEMS[item.name]
        unknown = sorted(set(item.params) - set(allowed))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for {item.name!r}; valid parameters: "
                             f"{', '.join(allowed) or 'none'}")
        params = {key: default for key, (_, default, _) in allowed.items()} | item.params
        missing = [k for k in REQUIRED.get(item.name, ()) if params[k] is None]
        if missing:
            raise ValueError(f"{item.name!r} needs {', '.join(missing)}=..., e.g. {item.name}:{missing[0]}=8")
        check_values(item.name, params)
        if item.name != "none":
            checked.append(SpecItem(item.name, params))
    names = {item.name for item in checked}
    if {"int8", "bf16"} <= names:
        raise ValueError("int8 and bf16 do not combine: int8 layers take float32 activations; choose one")
    return checked


def spec_to_string(items: list[SpecItem]) -> str:
    return ",".join(str(item) for item in items) or "none"
