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
