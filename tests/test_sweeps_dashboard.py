"""The sweeps page (`/static/sweeps.html`) in headless Chromium against a real service whose sweep
really trains: the sweeps list, the trials table, the objective chart and "open best run"."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.browser import DESKTOP, PageProblems, launch_chromium, screenshot, serious_accessibility_violations
from tests.conftest import LiveService

try:
    from playwright.sync_api import expect
except ImportError:
    pytest.skip("playwright is not installed (pip install -r requirements-dev.txt)", allow_module_level=True)

pytestmark = pytest.mark.browser

TWO_TINY_TRIALS: dict[str, Any] = {
    "algorithm": "PPO",
    "maze_size": 5,
    "total_episodes": 1,
    "timesteps_per_episode": 128,
    "n_envs": 4,
    "seed": 7,
    "n_trials": 2,
    "parallel_trials": 2,
    "search_space": {"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}},
}


def test_the_sweeps_page_shows_trials_the_objective_and_the_best_run(
    live_service: Callable[..., LiveService],
) -> None:
    service = live_service()
    with service.client() as api:
        sweep_id = api.post("/sweeps", json=TWO_TINY_TRIALS).raise_for_status().json()["sweep_id"]
        deadline = time.monotonic() + 300
        while api.get(f"/sweeps/{sweep_id}").json()["status"] != "completed":
            assert time.monotonic() < deadline, api.get(f"/sweeps/{sweep_id}").json()
            time.sleep(0.5)
        sweep = api.get(f"/sweeps/{sweep_id}").json()

    with launch_chromium() as browser:
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        page.set_default_timeout(30_000)
        problems = PageProblems(page)
        page.goto(f"{service.base_url}/static/sweeps.html")
        page.get_by_role("link", name=sweep_id[:8]).click()

        expect(page.locator("#trials-table tbody tr")).to_have_count(2)
        expect(page.locator("#sweep-summary")).to_contain_text("completed")
        expect(page.locator("#objective-chart canvas")).to_have_count(1)
        expect(page.locator("#best-run")).to_have_attribute("href", f"/#/runs/{sweep['best_run_id']}")
        screenshot(page, "sweeps-page")
        assert serious_accessibility_violations(page) == []
        page.locator("#best-run").click()
        page.wait_for_url(f"**/#/runs/{sweep['best_run_id']}")
        assert problems.errors == []
        context.close()
