"""The zoo's entries: `vitkit/recipes/zoo/NAME.yaml`. An entry may name a `base` recipe (a shipped recipe
name or a path) whose options it starts from; its own options replace the base's key by key (so a new
`model` comes with its own `model_kwargs`)."""

from pathlib import Path
from typing import Any

from ..models import resnet  # noqa: F401 - registers the CNN reference (until models/ imports it)
from ..training import TrainConfig, load_recipe
from ..training.config import RECIPES_DIR

ZOO_DIR = RECIPES_DIR / "zoo"


def zoo_names() -> list[str]:
    return sorted(p.stem for p in ZOO_DIR.glob("*.yaml"))


def check_models(models: list[str] | None) -> list[str]:
    """The entries asked for (all when None), unknown names refused with the valid ones listed."""
    valid = zoo_names()
    if not models:
        return valid
    unknown = [m for m in models if m not in valid]
    if unknown:
        raise ValueError(f"unknown zoo model(s) {', '.join(unknown)}; expected one of: {', '.join(valid)}")
    return list(dict.fromkeys(models))


def zoo_recipe(name: str) -> dict[str, Any]:
    """The entry's training options, its base recipe's merged under them."""
    options = load_recipe(str(ZOO_DIR / f"{name}.yaml"))
    base = options.pop("base", None)
    return {**load_recipe(base), **options} if base else options


def zoo_config(name: str, data: str, output: Path, seed: int, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The entry's TrainConfig for this zoo run: its data, output and seed (epochs are set later, from the
    budget); `overrides` are any other training options (tests use them to make runs tiny)."""
    options = {**zoo_recipe(name), "data": data, "output": str(output), "seed": seed, **(overrides or {})}
    return TrainConfig.from_dict(options)
