"""Real-browser test helpers: Debian's Chromium driven by Playwright (no browser download), and a live
service that serves the dashboard.

Chromium is looked up at `$CHROMIUM_PATH`, default `/usr/bin/chromium`. When it (or Playwright) is
missing the browser tests are skipped with the reason, except in CI (`CI` set), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from tests.conftest import PROJECT_ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS_DIR = PROJECT_ROOT / "test-artifacts"
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}


def skip_or_fail(reason: str, module_level: bool = False) -> NoReturn:
    """Missing browser tooling: a failure in CI, a skip (with the reason) anywhere else."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason, allow_module_level=module_level)


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH", DEFAULT_CHROMIUM)
    if not (Path(path).is_file() and os.access(path, os.X_OK)) and shutil.which(path) is None:
        skip_or_fail(f"Chromium not found at {path} (Debian: apt-get install chromium)")
    return path


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Headless Debian Chromium through Playwright's sync API."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -r requirements-dev.txt)")
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class PageProblems:
    """Collects what a page reports as broken: uncaught exceptions and console errors."""

    # Failed requests the tests cause on purpose (422 from the form, an unknown run, a restart) are
    # logged by Chromium as console errors.
    EXPECTED = re.compile(r"status of (404|409|422)|WebSocket connection to .* failed|ERR_CONNECTION_REFUSED")

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error" and not self.EXPECTED.search(message.text):
            self.errors.append(f"console: {message.text}")


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/ (gitignored) and return its path."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    path = ARTIFACTS_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
