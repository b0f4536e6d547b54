import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VITKIT_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = SHARED / "fixtures"
    if not path.is_dir():
        pytest.fail(f"reference fixtures not found at {path}; set VITKIT_SHARED to the shared/ folder")
    return path
