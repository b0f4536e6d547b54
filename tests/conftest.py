import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The reference outputs (made with timm 1.0.31 and the ToMe reference; see their READMEs) live in the
# repository, so a bare clone passes. VITKIT_FIXTURES points the tests at another copy, e.g. a newer
# ../shared/fixtures before refreshing tests/fixtures from it.
FIXTURES = Path(os.environ.get("VITKIT_FIXTURES", REPO / "tests" / "fixtures"))


def pytest_report_header(config):
    import importlib.metadata

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    packages = ("torch", "onnxruntime", "transformers", "numpy")
    return [f"vitkit peers: {', '.join(f'{p} {version(p)}' for p in packages)}; "
            f"cpu capability {torch.backends.cpu.get_cpu_capability()}"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "timm" / "README.md").is_file():
        pytest.fail(f"reference fixtures not found at {FIXTURES}; expected timm/ and tome/ with their READMEs")
    return FIXTURES


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """The digits recipe trained for 20 epochs (~25 s, ~90% top-1): a real model for the export, optimize and
    probe tests. Its best/ directory."""
    from vitkit.training import TrainConfig, load_recipe, train

    out = tmp_path_factory.mktemp("digits")
    recipe = {**load_recipe("digits"), "output": str(out), "epochs": 20, "eval_every": 20, "progress": False}
    summary = train(TrainConfig.from_dict(recipe))
    assert summary["report"].top1 > 0.8, "the shared digits model did not train"
    return out / "best"


@pytest.fixture
def onednn_for_every_size(monkeypatch):
    """Test models are tiny, below `apply_linear`'s size thresholds: with these at 0, every eligible linear
    layer takes the oneDNN path, so the tests exercise it."""
    import vitkit.layers.linear as linear_module

    for name in ("ONEDNN_MIN_MACS", "ONEDNN_MIN_MACS_FUSED", "ONEDNN_MIN_IN_FEATURES"):
        monkeypatch.setattr(linear_module, name, 0)
