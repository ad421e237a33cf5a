"""Real-browser test helpers: Debian's Chromium driven by Playwright (no browser download), and a live
service that serves the dashboard.

Chromium is looked up at `$CHROMIUM_PATH`, default `/usr/bin/chromium`. When it (or Playwright) is
missing the browser tests are skipped with the reason, except in CI (`CI` set), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import time
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
AXE_SCRIPT = PROJECT_ROOT / "static" / "vendor" / "axe-core" / "axe.min.js"
RUN_URL = re.compile(r"#/runs/([0-9a-f-]{36})$")
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

    # Failed requests the tests cause on purpose (422 from the form, an unknown run, a restart, a
    # missing or wrong API key) are logged by Chromium as console errors.
    EXPECTED = re.compile(
        r"status of (401|404|409|422)|WebSocket connection to .* failed|ERR_CONNECTION_REFUSED"
    )

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error" and not self.EXPECTED.search(message.text):
            self.errors.append(f"console: {message.text}")


def serious_accessibility_violations(page: Page) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now, one line each."""
    page.add_script_tag(path=str(AXE_SCRIPT))
    found: list[str] = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
            .filter((v) => v.impact === "serious" || v.impact === "critical")
            .map((v) => `${v.id}: ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`)"""
    )
    return found


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/ (gitignored) and return its path."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    path = ARTIFACTS_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


class Dashboard:
    """One browser tab on the service's dashboard."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.problems = PageProblems(page)

    def open(self, fragment: str = "#/") -> None:
        self.page.goto(f"{self.base_url}/{fragment}")

    def field_error(self, name: str) -> Any:
        return self.page.locator(f'#start-form .field[data-field="{name}"] .field-error')

    def fill_start_form(self, values: dict[str, Any]) -> None:
        if self.page.locator("#advanced").get_attribute("open") is None:
            self.page.locator("#advanced summary").click()
        for name, value in values.items():
            if name == "hyperparameters":
                self.page.fill('textarea[name="hyperparameters"]', value)
            elif name in ("algorithm", "policy", "maze_mode", "device"):
                self.page.select_option(f'select[name="{name}"]', str(value))
            else:
                self.page.fill(f'input[name="{name}"]', str(value))

    def run_id_from_url(self) -> str:
        self.page.wait_for_url(RUN_URL)
        match = RUN_URL.search(self.page.url)
        assert match, self.page.url
        return match.group(1)

    def chart_points(self) -> dict[str, int]:
        points: dict[str, int] = self.page.evaluate(
            "() => Object.fromEntries([...document.querySelectorAll('figure.chart')]"
            ".map((f) => [f.id.replace('chart-', ''), Number(f.dataset.points)]))"
        )
        return points

    def ws_messages(self) -> int:
        return int(self.page.locator("#view-detail").get_attribute("data-ws-messages") or 0)

    def episode_shown(self) -> int:
        match = re.search(r"Episode (\d+)", self.page.locator("#d-progress-text").inner_text())
        return int(match.group(1)) if match else -1

    def assert_no_page_errors(self) -> None:
        assert self.problems.errors == [], self.problems.errors


def wait_until(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
