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
# Runs until stopped: a 30-iteration run could end (and the page rightly read its record again) while the
# test watched its charts grow from messages alone.
ENDLESS_PPO: dict[str, Any] = {**SHORT_PPO, "total_episodes": 100_000}
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


def finished_run(api: httpx.Client, run_id: str, status: str = "completed") -> dict[str, Any]:
    """The run once it ended with `status` and its model is exported (MLflow has every point by then)."""

    def exported() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/experiments/{run_id}").raise_for_status().json()
        if body["status"] in FINAL_STATES and body["status"] != status:
            raise AssertionError(f"run ended {body['status']}: {body['training'].get('error')}")
        done = body["status"] == status and (body.get("onnx") or {}).get("status") == "exported"
        return body if done else None

    body: dict[str, Any] = wait_until(exported, TRAINING_TIMEOUT_S, f"run {run_id} {status} and exported")
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
    run_id = start(api, ENDLESS_PPO)
    other = start(api, {**SHORT_PPO, "hyperparameters": {"learning_rate": 0.001}})
    page = dashboard.page
    dashboard.open(f"#/runs/{run_id}")
    expect(page.locator("#d-socket")).to_have_attribute("data-state", "live", timeout=60_000)
    expect(page.locator("#d-status")).to_have_text("running", timeout=60_000)
    # The record learns its MLflow run from MLflow's background sender, seconds after the run starts
    # on a busy machine; until the page has read it, it reads the record again every few seconds.
    expect(page.locator("#d-links > *")).not_to_have_count(0, timeout=120_000)
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
    reason = page.locator("#view-detail").get_attribute("data-last-load")
    assert history_loads(page) == loads, f"the page read the history again ({reason}), not only messages"
    # Every point MLflow has up to the chart's last step is drawn, and only those: the live curve is
    # the finished one as far as it goes, not one point per message (when training is quick, a message
    # carries several iterations' points: tests/test_websocket.py checks that).
    for key in CHARTED:
        count, last = live[key]
        assert count == len({s for s in steps(history[key]) if s <= last}), (key, live, history[key])

    # The comparison follows running runs too.
    dashboard.open(f"#/compare/{run_id},{other}")
    expect(page.get_by_role("heading", name="Compare runs")).to_be_visible()
    expect(page.locator("#c-live")).to_contain_text("running")
    before = compared_points(page, "Reward")[0]
    wait_until(lambda: compared_points(page, "Reward")[0] > before, 120, "the live run's curve to grow")
    screenshot(page, "compare-live")

    api.post(f"/training/stop/{run_id}", params={"wait_s": 60}).raise_for_status()
    bodies = {run_id: finished_run(api, run_id, "stopped"), other: finished_run(api, other)}
    table = page.get_by_role("table", name="Final figures and settings of the compared runs")
    expect(table.get_by_role("row", name=re.compile(r"^State"))).to_have_text(
        re.compile(r"stopped\s*completed"), timeout=30_000
    )
    for name, key in (("Reward", "reward"), ("Success rate", "success_rate"), ("Loss", "loss")):
        expected = ",".join(str(len(steps(bodies[run]["history"][key]))) for run in (run_id, other))
        expect(page.get_by_role("figure", name=re.compile(name))).to_have_attribute("data-points", expected)
    expect(page.locator("#c-live")).to_have_text("")

    dashboard.open(f"#/runs/{run_id}")
    expect(page.locator("#d-status")).to_have_text("stopped")
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
    fast = start(api, {**SHORT_PPO, "policy": "mlp", "hyperparameters": {"learning_rate": 0.001}})
    bodies = {run_id: finished_run(api, run_id) for run_id in (slow, fast)}
    labels = {slow: f"{slow[:8]} · PPO · 5×5 · planner", fast: f"{fast[:8]} · PPO · 5×5 · mlp"}
    page = dashboard.page
    dashboard.open()

    compare = page.get_by_role("button", name=re.compile("Compare"))
    expect(compare).to_be_disabled()
    page.get_by_role("checkbox", name=f"Compare run {slow[:8]}").check()
    page.get_by_role("checkbox", name=f"Compare run {fast[:8]}").focus()
    page.keyboard.press("Space")  # with the keyboard too
    expect(compare).to_have_text("Compare 2 selected runs")
    expect(compare).to_be_enabled()
    # The table re-renders every few seconds: the choice stays.
    page.wait_for_timeout(3500)
    expect(page.get_by_role("checkbox", name=f"Compare run {slow[:8]}")).to_be_checked()
    expect(page.get_by_role("checkbox", name=f"Compare run {fast[:8]}")).to_be_checked()
    fast_row = page.get_by_role("row").filter(has=page.get_by_role("link", name=fast[:8], exact=True))
    expect(fast_row.get_by_role("cell", name="mlp", exact=True)).to_be_visible()  # the Policy column
    screenshot(page, "compare-runs-list")
    compare.focus()
    page.keyboard.press("Enter")

    expect(page.get_by_role("heading", name="Compare runs")).to_be_visible()
    order = page.url.split("#/compare/")[1].split(",")
    assert sorted(order) == sorted([slow, fast])
    legend = page.get_by_role("list", name="Runs compared")
    for run_id in (slow, fast):
        expect(legend).to_contain_text(labels[run_id])
    for name, key in (("Reward", "reward"), ("Success rate", "success_rate"), ("Loss", "loss")):
        figure = page.get_by_role("figure", name=re.compile(name))
        expected = ",".join(str(len(steps(bodies[run_id]["history"][key]))) for run_id in (slow, fast))
        expect(figure).to_have_attribute("data-series", "2")
        expect(figure).to_have_attribute("data-points", expected)
        expect(figure).to_contain_text(f"{labels[slow]}: ")  # the text alternative names each run

    table = page.get_by_role("table", name="Final figures and settings of the compared runs")
    learning_rate = table.get_by_role("row", name=re.compile(r"^learning_rate"))
    expect(learning_rate).to_contain_text("differs")
    expect(learning_rate).to_have_class(re.compile("differs"))
    expect(learning_rate).to_contain_text("0.0001")
    expect(learning_rate).to_contain_text("0.001")
    policy = table.get_by_role("row", name=re.compile(r"^policy\s"))  # not policy_class
    expect(policy).to_contain_text("differs")
    expect(policy.get_by_role("cell")).to_have_text(
        ["planner" if run_id == slow else "mlp" for run_id in order]
    )
    algorithm = table.get_by_role("row", name=re.compile(r"^algorithm"))
    expect(algorithm).not_to_contain_text("differs")
    expect(table.get_by_role("row", name=re.compile(r"^State"))).to_contain_text("completed")
    assert_best_figures_marked(table, order, bodies)
    screenshot(page, "compare-two-runs")

    assert_smoothing_of_every_run(page, order, labels, bodies)
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


# The final figures ranked in the comparison's table: which end is best.
RANKED_FIGURES = {
    "Reward": max,
    "Success rate": max,
    "Best held-out success": max,
    "Best path efficiency": max,
    "Loss": min,
}


def shown_number(text: str) -> float | None:
    """A table cell's figure as shown ("-0.123", "95%", "1,234"; "—" when none), its "best" tag aside."""
    match = re.match(r"-?[\d,]*\.?\d+", text.strip())
    return float(match.group().replace(",", "")) if match else None


def assert_best_figures_marked(table: Any, order: list[str], bodies: dict[str, dict[str, Any]]) -> None:
    """Each ranked row marks its best figure as shown, in words ("best") and bold, and no other; a
    row where every run shows the same figure marks none."""
    marked = 0
    for label, best in RANKED_FIGURES.items():
        cells = table.get_by_role("row", name=re.compile(f"^{label}")).get_by_role("cell")
        texts = cells.all_inner_texts()
        numbers = [shown_number(text) for text in texts]
        ranked = [n for n in numbers if n is not None]
        top = best(ranked) if len(ranked) >= 2 and len(set(ranked)) > 1 else None
        for index, (text, number) in enumerate(zip(texts, numbers, strict=True)):
            is_best = top is not None and number == top
            assert ("best" in text) == is_best, (label, texts)
            if is_best:
                expect(cells.nth(index).locator("strong")).to_have_text(text.replace("best", "").strip())
                marked += 1
    assert marked, "no figure differed between the runs: nothing was marked best"
    # The marked loss is the lower of the two runs' (the column is the run's).
    losses = [bodies[run_id]["training"]["loss"] for run_id in order]
    loss_cells = table.get_by_role("row", name=re.compile("^Loss")).get_by_role("cell").all_inner_texts()
    lower = losses.index(min(losses))
    if len(set(shown_number(text) for text in loss_cells)) > 1:
        assert "best" in loss_cells[lower], (losses, loss_cells)


def smoothed(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing (the dashboard's): a moving average, debiased at the start."""
    average, out = 0.0, []
    for index, value in enumerate(values):
        average = average * weight + (1 - weight) * value
        out.append(average / (1 - weight ** (index + 1)))
    return out


def assert_smoothing_of_every_run(
    page: Page, order: list[str], labels: dict[str, str], bodies: dict[str, dict[str, Any]]
) -> None:
    """The comparison's Smoothing slider (keyboard) smooths each run's curve as a run's page does: the
    text alternative gives each run's raw and smoothed latest values, the raw points stay drawn."""
    reward = page.get_by_role("figure", name=re.compile("Reward"))
    drawn = reward.get_attribute("data-points")
    expect(reward).not_to_contain_text("(smoothed ")
    slider = page.get_by_role("slider", name="Smoothing")
    slider.focus()
    page.keyboard.press("End")
    expect(slider).to_have_value("0.99")
    for run_id in order:
        label = re.escape(labels[run_id])
        expect(reward).to_contain_text(re.compile(rf"{label}: \S+ \(smoothed \S+\) at step"))
        readout = reward.inner_text()
        match = re.search(rf"{label}: (\S+) \(smoothed (\S+)\) at step", readout)
        assert match, readout
        by_step = {int(p["step"]): float(p["value"]) for p in bodies[run_id]["history"]["reward"]}
        values = [by_step[step] for step in sorted(by_step)]
        assert float(match.group(1)) == pytest.approx(values[-1], rel=0.01, abs=1e-9), readout
        assert float(match.group(2)) == pytest.approx(smoothed(values, 0.99)[-1], rel=0.01, abs=1e-9), readout
    expect(reward).to_have_attribute("data-points", drawn or "")
    for name in ("Success rate", "Loss"):
        expect(page.get_by_role("figure", name=re.compile(name))).to_contain_text("(smoothed ")
    screenshot(page, "compare-smoothed")
