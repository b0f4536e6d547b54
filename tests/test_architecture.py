"""The package graph is a DAG in one direction (docs/architecture.md): a package imports only packages below
it, lazily inside functions too, so no import loop can come back through a function body."""

import ast
from pathlib import Path

from conftest import REPO

# low -> high; a package may import those at its level or below (siblings on one level must not loop)
LEVELS = [
    ("_version", "layers", "reporting"),
    ("models",),
    ("weights",),
    ("data", "evaluation", "efficiency"),
    ("training",),
    ("bench", "probe", "trust", "zoo"),
    ("api", "cli", "__init__", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(LEVELS) for name in names}
PACKAGE = REPO / "src" / "vitkit"


def _package_of(path: Path) -> str:
    part = path.relative_to(PACKAGE).parts[0]
    return part.removesuffix(".py")


def _imported_packages(source: str, depth: int) -> set[str]:
    """The vitkit packages a module imports, at module level or inside functions; `depth` is how many
    folders below vitkit/ the module is."""
    tree = ast.parse(source)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb to vitkit/, then name the first part
                up = node.level - 1
                if up < depth:
                    continue  # inside its own package
                parts = (node.module or "").split(".")
                if up == depth and parts[0]:
                    found.add(parts[0])
                elif up == depth:  # `from .. import x`: a package, else a name of vitkit/__init__.py
                    found.update(alias.name if alias.name in RANK else "__init__" for alias in node.names)
            elif node.module and node.module.startswith("vitkit."):
                found.add(node.module.split(".")[1])
            elif node.module == "vitkit":
                found.update(alias.name for alias in node.names if alias.name in RANK)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vitkit."):
                    found.add(alias.name.split(".")[1])
                elif alias.name == "vitkit":
                    found.add("__init__")
    return found


def test_every_module_belongs_to_a_level():
    unplaced = {_package_of(p) for p in PACKAGE.rglob("*.py")} - set(RANK)
    assert not unplaced, f"place these in LEVELS (and docs/architecture.md): {sorted(unplaced)}"


def test_packages_import_downwards_only():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _package_of(path)
        for other in _imported_packages(path.read_text(), len(path.relative_to(PACKAGE).parts) - 1):
            if other in RANK and other != own and RANK[other] >= RANK[own] and RANK[own] < RANK["api"]:
                if RANK[other] > RANK[own] or (own, other) in _SIBLING_EDGES_FORBIDDEN:
                    upward.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert not upward, "imports against the package order:\n" + "\n".join(upward)


# siblings may import each other only one way: data is the lowest of the three
_SIBLING_EDGES_FORBIDDEN = {("data", "evaluation"), ("data", "efficiency"), ("evaluation", "efficiency")}


def test_the_checker_sees_lazy_imports():
    source = "import torch\nfrom . import z\n\ndef f():\n    from ..training import x\n    from . import y\n"
    assert _imported_packages(source, depth=1) == {"training"}  # a module in models/
    assert _imported_packages("from ...weights.io import w\n", depth=2) == {"weights"}  # models/vit/
    assert _imported_packages("import vitkit\nfrom vitkit.bench import b\n", depth=1) == {"__init__", "bench"}
    assert _imported_packages("from .. import __version__\n", depth=1) == {"__init__"}
