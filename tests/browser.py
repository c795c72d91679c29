"""A real headless Chromium for the browser tests: Debian's `chromium` (scripts/browser-env.sh,
which scripts/test.sh starts installing in the background), driven by Playwright for Python
through `executable_path`. Where it cannot be had (not root, no apt-get, no network to Debian's
packages) the tests skip and say why."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

REPO = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT = 900  # seconds: apt-get update and install, ~30 s on this project's machines


def chromium() -> str:
    """The Chromium executable, installed first if it can be; skips the test where it cannot."""
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "browser-env.sh")],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    path = shutil.which("chromium")
    if res.returncode == 3 or (res.returncode != 0 and path is None):
        pytest.skip(f"no Chromium: {(res.stderr or res.stdout).strip()[-300:]}")
    if res.returncode != 0 or path is None:
        raise RuntimeError(f"scripts/browser-env.sh failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return path


@contextmanager
def headless_chromium() -> Iterator[Browser]:
    """A Playwright Browser over Debian's Chromium (no sandbox: the tests run as root)."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
