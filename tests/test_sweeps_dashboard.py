"""The sweeps page (`/static/sweeps.html`) in headless Chromium against a real service whose sweep
really trains: the sweeps list, the trials table, the objective chart, the parameters against the
objective (with the keyboard), "open best run", and the runs table's link from a trial to its sweep."""

from __future__ import annotations

import re
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
    "search_space": {
        "learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2},
        "n_epochs": {"type": "categorical", "choices": [1, 2]},
    },
}


def as_shown(value: float) -> str:
    """A parameter's value as the page writes it (3 significant digits, JavaScript's number format)."""
    return repr(float(f"{value:.3g}")).removesuffix(".0")


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

    trials = sorted(sweep["trials"], key=lambda t: t["params"]["learning_rate"])
    best = sweep["best_trial"]

    with launch_chromium() as browser:
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        page.set_default_timeout(30_000)
        problems = PageProblems(page)
        # The runs table names each trial's sweep, linked to the sweeps page.
        page.goto(f"{service.base_url}/#/")
        page.get_by_role("link", name=f"trial 0 of sweep {sweep_id[:8]}").click()
        page.wait_for_url(f"**/static/sweeps.html#{sweep_id}")

        expect(page.get_by_role("heading", name=re.compile(f"^Sweep {sweep_id[:8]}"))).to_be_visible()
        expect(page.locator("#trials-table tbody tr")).to_have_count(2)
        expect(page.locator("#sweep-summary")).to_contain_text("completed")
        expect(page.locator("#objective-chart canvas")).to_have_count(1)

        # Parameters against the objective: one chart per searched parameter, stepped with the keys.
        expect(page.get_by_role("heading", name="Parameters against success rate")).to_be_visible()
        learning_rate = page.get_by_role("figure", name="learning_rate (log scale)")
        n_epochs = page.get_by_role("figure", name="n_epochs", exact=True)
        expect(learning_rate.locator("canvas")).to_have_count(1)
        expect(n_epochs.locator("canvas")).to_have_count(1)
        expect(learning_rate).to_have_accessible_description(re.compile("^2 completed trials; best"))
        learning_rate.focus()
        page.keyboard.press("Home")
        lowest = trials[0]
        expect(learning_rate).to_have_accessible_description(
            f"trial {lowest['number']}: learning_rate = {as_shown(lowest['params']['learning_rate'])}, "
            f"success rate {round(lowest['success_rate'] * 100)}%, first reached at "
            f"{lowest['steps_to_best']:,} steps"
        )
        page.keyboard.press("ArrowRight")
        expect(learning_rate).to_have_accessible_description(re.compile(f"^trial {trials[1]['number']}: "))
        table = page.get_by_role("table", name="Searched parameters and the best trial's values")
        for key, searched in [("learning_rate", "log-uniform 0.0001–0.01"), ("n_epochs", "one of 1, 2")]:
            cells = table.get_by_role("row", name=re.compile(f"^{key}")).get_by_role("cell")
            expect(cells.nth(0)).to_have_text(searched)
            expect(cells.nth(1)).to_have_text(as_shown(best["params"][key]))
        best_run = page.get_by_role("link", name="Open best run")
        expect(best_run).to_have_attribute("href", f"/#/runs/{sweep['best_run_id']}")
        screenshot(page, "sweeps-page")
        assert serious_accessibility_violations(page) == []
        best_run.click()
        page.wait_for_url(f"**/#/runs/{sweep['best_run_id']}")
        assert problems.errors == []
        context.close()
