"""Headless Chromium for the report tests (bench, trust): the DOM after scripts ran and the console.
CI installs Debian's chromium (.ci/run) and sets VITKIT_REQUIRE_BROWSER, so there a missing browser fails."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found and os.environ.get("VITKIT_REQUIRE_BROWSER"):
        pytest.fail("chromium is required here (.ci/run installs Debian's chromium) but was not found")
    if not found:
        pytest.skip("no chromium on this machine; .ci/run installs it")
    return found


def render(html_path: Path) -> tuple[str, list[str]]:
    """The DOM after scripts ran, and the page's console messages, from headless chromium."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", html_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
