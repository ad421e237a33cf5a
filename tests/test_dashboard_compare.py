"""The dashboard's dense live curves and its run comparison, as a person uses them, in headless Chromium
against a real service that really trains (progress messages every 2 s, several iterations apart).

Screenshots land in test-artifacts/ (gitignored): the runs list with two runs picked, a live run, a
finished run and their comparison. Needs Debian's Chromium (see tests/browser.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import (
    DESKTOP,
    Dashboard,
    launch_chromium,
    screenshot,
    serious_accessibility_violations,
    skip_or_fail,
    wait_until,
)
from tests.conftest import FINAL_STATES, LiveService, copy_mlflow_store

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:
    skip_or_fail("playwright is not installed (pip install -r requirements-dev.txt)", module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.service]

# Iterations of a fraction of a second on a fixed 5x5 maze: several MLflow points per 2 s message.
SHORT_PPO: dict[str, Any] = {
    "algorithm": "PPO",
    "total_episodes": 8,
    "timesteps_per_episode": 128,
    "maze_size": 5,
    "maze_mode": "fixed",
    "n_envs": 4,
    "seed": 7,
}
LONG_PPO: dict[str, Any] = {**SHORT_PPO, "total_episodes": 30}
CHARTED = ("reward", "success_rate", "loss")
TRAINING_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path) -> Iterator[LiveService]:
    data_dir = tmp_path_factory.mktemp("dashboard-compare") / "data"
    copy_mlflow_store(mlflow_store_template, data_dir)  # a migrated store: seconds saved at start-up
    live = LiveService(data_dir, env={"PROGRESS_INTERVAL_S": "2"})
    try:
        live.start()
        live.wait_for_mlflow()  # every run has its MLflow run (its points) from its first step
        yield live
    finally:
        live.stop()


@pytest.fixture
def api(service: LiveService) -> Iterator[httpx.Client]:
    with service.client() as client:
        yield client


@pytest.fixture
def dashboard(browser: Browser, service: LiveService, request: pytest.FixtureRequest) -> Iterator[Dashboard]:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(30_000)
    view = Dashboard(page, service.base_url)
    try:
        yield view
    finally:
        screenshot(page, f"{request.node.name}-last")
        context.close()


def start(api: httpx.Client, body: dict[str, Any]) -> str:
    return str(api.post("/training/start", json=body).raise_for_status().json()["experiment_id"])


def finished_run(api: httpx.Client, run_id: str) -> dict[str, Any]:
    """The run once it completed and its model is exported (MLflow has every point by then)."""

    def exported() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/experiments/{run_id}").raise_for_status().json()
        if body["status"] in FINAL_STATES and body["status"] != "completed":
            raise AssertionError(f"run ended {body['status']}: {body['training'].get('error')}")
        done = body["status"] == "completed" and (body.get("onnx") or {}).get("status") == "exported"
        return body if done else None

    body: dict[str, Any] = wait_until(exported, TRAINING_TIMEOUT_S, f"run {run_id} completed and exported")
    return body


def steps(points: list[dict[str, Any]]) -> set[int]:
    return {int(p["step"]) for p in points}


def chart_state(page: Page) -> dict[str, tuple[int, int]]:
    """Each run-page chart's (points drawn, step of the last one)."""
    state: dict[str, list[int]] = page.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('#view-detail figure.chart')]"
        ".map((f) => [f.id.replace('chart-', ''),"
        " [Number(f.dataset.points), Number(f.dataset.lastStep || -1)]]))"
    )
    return {key: (value[0], value[1]) for key, value in state.items()}


def history_loads(page: Page) -> int:
    return int(page.locator("#view-detail").get_attribute("data-history-loads") or 0)


def compared_points(page: Page, name: str) -> list[int]:
    """Points drawn per run on the comparison's chart `name`."""
    text = page.get_by_role("figure", name=re.compile(name)).get_attribute("data-points") or "0"
    return [int(n) for n in text.split(",")]


def test_live_curves_have_the_finished_curves_points_on_the_run_page_and_in_a_comparison(
    dashboard: Dashboard, api: httpx.Client
) -> None:
    run_id = start(api, LONG_PPO)
    other = start(api, {**SHORT_PPO, "hyperparameters": {"learning_rate": 0.001}})
    page = dashboard.page
    dashboard.open(f"#/runs/{run_id}")
    expect(page.locator("#d-socket")).to_have_attribute("data-state", "live", timeout=60_000)
    expect(page.locator("#d-status")).to_have_text("running", timeout=60_000)
    wait_until(lambda: chart_state(page)["reward"][0] >= 2, 120, "the first points")
    loads, messages, drawn = history_loads(page), dashboard.ws_messages(), chart_state(page)["reward"][0]
    # From here the charts grow from progress messages alone (the page reads no history).
    wait_until(
        lambda: dashboard.ws_messages() >= messages + 2 and chart_state(page)["reward"][0] >= drawn + 3,
        180,
        "the charts to grow from WebSocket messages",
    )
    live = chart_state(page)
    history = api.get(f"/experiments/{run_id}").raise_for_status().json()["history"]
    screenshot(page, "compare-run-live")
    assert history_loads(page) == loads, "the page read the history again instead of using the messages"
    # Every point MLflow has up to the chart's last step is drawn, and only those: the live curve is
    # the finished one as far as it goes, not one point per message (when training is quick, a message
    # carries several iterations' points: tests/test_websocket.py checks that).
    for key in CHARTED:
        count, last = live[key]
        assert count == len({s for s in steps(history[key]) if s <= last}), (key, live, history[key])

    # The comparison follows running runs too.
    dashboard.open(f"#/compare/{run_id},{other}")
    expect(page.get_by_role("heading", name="Compare runs")).to_be_visible()
    if api.get(f"/training/status/{run_id}").json()["status"] == "running":
        expect(page.locator("#c-live")).to_contain_text("running")
        before = compared_points(page, "Reward")[0]
        wait_until(lambda: compared_points(page, "Reward")[0] > before, 120, "the live run's curve to grow")
        screenshot(page, "compare-live")

    bodies = {key: finished_run(api, key) for key in (run_id, other)}
    table = page.get_by_role("table", name="Final figures and settings of the compared runs")
    expect(table.get_by_role("row", name=re.compile(r"^State"))).to_have_text(
        re.compile(r"completed\s*completed"), timeout=30_000
    )
    for name, key in (("Reward", "reward"), ("Success rate", "success_rate"), ("Loss", "loss")):
        expected = ",".join(str(len(steps(bodies[run]["history"][key]))) for run in (run_id, other))
        expect(page.get_by_role("figure", name=re.compile(name))).to_have_attribute("data-points", expected)
    expect(page.locator("#c-live")).to_have_text("")

    dashboard.open(f"#/runs/{run_id}")
    expect(page.locator("#d-status")).to_have_text("completed")
    finished = bodies[run_id]["history"]
    wait_until(
        lambda: all(chart_state(page)[key][0] == len(steps(finished[key])) for key in CHARTED),
        30,
        f"the finished curves ({ {k: len(steps(v)) for k, v in finished.items()} })",
    )
    screenshot(page, "compare-run-finished")
    dashboard.assert_no_page_errors()


def test_compare_two_finished_runs_overlays_curves_and_highlights_the_differing_setting(
    dashboard: Dashboard, api: httpx.Client
) -> None:
    slow = start(api, {**SHORT_PPO, "hyperparameters": {"learning_rate": 0.0001}})
    fast = start(api, {**SHORT_PPO, "hyperparameters": {"learning_rate": 0.001}})
    bodies = {run_id: finished_run(api, run_id) for run_id in (slow, fast)}
    page = dashboard.page
    dashboard.open()

    compare = page.get_by_role("button", name=re.compile("Compare"))
    expect(compare).to_be_disabled()
    for run_id in (slow, fast):
        page.get_by_role("checkbox", name=f"Compare run {run_id[:8]}").check()
    expect(compare).to_have_text("Compare 2 selected runs")
    expect(compare).to_be_enabled()
    # The table re-renders every few seconds: the choice stays.
    page.wait_for_timeout(3500)
    expect(page.get_by_role("checkbox", name=f"Compare run {slow[:8]}")).to_be_checked()
    screenshot(page, "compare-runs-list")
    compare.click()

    expect(page.get_by_role("heading", name="Compare runs")).to_be_visible()
    assert sorted(page.url.split("#/compare/")[1].split(",")) == sorted([slow, fast])
    legend = page.get_by_role("list", name="Runs compared")
    for run_id in (slow, fast):
        expect(legend).to_contain_text(f"{run_id[:8]} · PPO · 5×5")
    for name, key in (("Reward", "reward"), ("Success rate", "success_rate"), ("Loss", "loss")):
        figure = page.get_by_role("figure", name=re.compile(name))
        expected = ",".join(str(len(steps(bodies[run_id]["history"][key]))) for run_id in (slow, fast))
        expect(figure).to_have_attribute("data-series", "2")
        expect(figure).to_have_attribute("data-points", expected)
        expect(figure).to_contain_text(f"{slow[:8]} · PPO · 5×5: ")  # the text alternative names each run

    table = page.get_by_role("table", name="Final figures and settings of the compared runs")
    learning_rate = table.get_by_role("row", name=re.compile(r"^learning_rate"))
    expect(learning_rate).to_contain_text("differs")
    expect(learning_rate).to_have_class(re.compile("differs"))
    expect(learning_rate).to_contain_text("0.0001")
    expect(learning_rate).to_contain_text("0.001")
    algorithm = table.get_by_role("row", name=re.compile(r"^algorithm"))
    expect(algorithm).not_to_contain_text("differs")
    expect(table.get_by_role("row", name=re.compile(r"^State"))).to_contain_text("completed")
    screenshot(page, "compare-two-runs")

    assert serious_accessibility_violations(page) == []
    page.get_by_label("Show only the settings that differ").check()
    expect(algorithm).to_be_hidden()
    expect(learning_rate).to_be_visible()
    screenshot(page, "compare-only-differences")
    # The keyboard reaches each run's page from the comparison.
    page.get_by_role("link", name=re.compile(slow[:8])).first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#d-id")).to_have_text(slow)
    dashboard.assert_no_page_errors()
