"""The dashboard as a person uses it: the API key, a run's page that follows its run, limits said before
the error, and accessibility (axe-core), in headless Chromium against a real service with `API_KEY` set.

Screenshots land in test-artifacts/ (gitignored). Needs Debian's Chromium (see tests/browser.py).
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
)
from tests.conftest import LiveService

try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect
except ImportError:
    skip_or_fail("playwright is not installed (pip install -r requirements-dev.txt)", module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.service]

API_KEY = "key-for-the-dashboard-tests"
# Runs until stopped; with one training slot a second run waits in the queue.
ENDLESS_PPO: dict[str, Any] = {
    "algorithm": "PPO",
    "total_episodes": 1500,
    "timesteps_per_episode": 128,
    "maze_size": 5,
    "maze_mode": "fixed",
    "n_envs": 4,
    "seed": 7,
}
NUMBER_FIELDS = {
    "Total episodes": "total_episodes",
    "Timesteps per episode": "timesteps_per_episode",
    "Maze size": "maze_size",
    "Seed": "seed",
    "Parallel environments": "n_envs",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path) -> Iterator[LiveService]:
    env = {"API_KEY": API_KEY, "MAX_CONCURRENT_RUNS": "1"}
    live = LiveService(
        tmp_path_factory.mktemp("dashboard-keyed") / "data", env=env, mlflow_store=mlflow_store_template
    )
    try:
        yield live.start()
    finally:
        live.stop()


@pytest.fixture
def api(service: LiveService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.base_url, timeout=60, headers={"X-API-Key": API_KEY}) as client:
        yield client


def new_tab(context: BrowserContext, service: LiveService) -> Dashboard:
    page = context.new_page()
    page.set_default_timeout(30_000)
    return Dashboard(page, service.base_url)


@pytest.fixture
def context(browser: Browser, request: pytest.FixtureRequest) -> Iterator[BrowserContext]:
    """A fresh browser profile: no key saved yet."""
    context = browser.new_context(viewport=DESKTOP)
    try:
        yield context
    finally:
        for index, page in enumerate(context.pages):
            screenshot(page, f"{request.node.name}-last-{index}")
        context.close()


@pytest.fixture
def keyed_context(context: BrowserContext) -> BrowserContext:
    """A profile in which the person already entered the right key."""
    context.add_init_script(f"localStorage.setItem('rlmaze.apiKey', {API_KEY!r})")
    return context


def test_key_prompt_comes_once_and_a_wrong_key_is_not_an_outage(
    context: BrowserContext, service: LiveService
) -> None:
    dashboard = new_tab(context, service)
    page = dashboard.page
    dashboard.open()
    prompt = page.get_by_role("dialog", name="API key")
    expect(prompt).to_be_visible()
    prompt.get_by_role("button", name="Cancel").click()
    expect(prompt).to_be_hidden()

    banner = page.get_by_role("alert").filter(has_text="This service needs an API key")
    expect(banner).to_be_visible()
    header = page.get_by_role("banner")
    expect(header).to_contain_text("this service needs an API key")
    # The runs table polls every 3 s: each refused poll must not ask again.
    page.wait_for_timeout(7_000)
    expect(prompt).to_be_hidden()
    expect(header).not_to_contain_text("unreachable")
    screenshot(page, "key-cancelled")

    banner.get_by_role("button", name="Enter API key").click()
    expect(prompt).to_be_visible()
    prompt.get_by_label("API key").fill("not-the-key")
    prompt.get_by_role("button", name="Save key").click()
    expect(page.get_by_role("alert").filter(has_text="Wrong API key")).to_be_visible()
    expect(header).to_contain_text("wrong API key")
    expect(page.get_by_text("Could not load runs: wrong API key")).to_be_visible()
    expect(header).not_to_contain_text("unreachable")
    expect(page.get_by_text("X-API-Key header")).to_have_count(0)
    screenshot(page, "key-wrong")

    page.get_by_role("button", name="Enter API key").click()
    prompt.get_by_label("API key").fill(API_KEY)
    prompt.get_by_role("button", name="Save key").click()
    expect(page.get_by_text(re.compile(r"No runs yet|\d+ of \d+ runs"))).to_be_visible()
    expect(header).to_contain_text("service ok", timeout=15_000)
    expect(page.get_by_role("alert").filter(has_text="API key")).to_be_hidden()
    dashboard.assert_no_page_errors()


def test_run_page_follows_its_run_from_the_queue_to_stopped(
    keyed_context: BrowserContext, service: LiveService, api: httpx.Client
) -> None:
    service.wait_for_mlflow()
    first = api.post("/training/start", json=ENDLESS_PPO).raise_for_status().json()["experiment_id"]
    second = api.post("/training/start", json=ENDLESS_PPO).raise_for_status().json()["experiment_id"]
    try:
        dashboard = new_tab(keyed_context, service)
        page = dashboard.page
        dashboard.open(f"#/runs/{second}")
        badge = page.locator("#d-status")
        expect(badge).to_have_text("queued")
        not_recorded = page.get_by_text("no MLflow run recorded yet")
        expect(not_recorded).to_be_visible()

        api.post(f"/training/stop/{first}", params={"wait_s": 30}).raise_for_status()
        expect(badge).to_have_text("running", timeout=60_000)
        # Loaded while queued; the page must notice the MLflow run the API has had since it started.
        expect(not_recorded).to_have_count(0, timeout=60_000)
        live = page.get_by_text("live", exact=True)
        expect(live).to_have_attribute("title", re.compile("WebSocket"))
        expect(page.get_by_role("figure", name=re.compile("Reward"))).to_contain_text(
            re.compile(r"latest .* at step [\d,]+"), timeout=60_000
        )
        violations = serious_accessibility_violations(page)
        assert violations == [], violations
        assert_charts_read_out_and_smooth(page)
        screenshot(page, "run-live-keyed")

        page.evaluate(
            """() => {
              window.contradictions = [];
              const badge = document.getElementById("d-status");
              const message = document.getElementById("d-message");
              new MutationObserver(() => {
                if (badge.textContent === "stopped" && message.textContent.includes("Stopping"))
                  window.contradictions.push(message.textContent);
              }).observe(document.body, { subtree: true, childList: true, characterData: true });
            }"""
        )
        page.get_by_role("button", name="Stop run").click()
        expect(badge).to_have_text("stopped", timeout=90_000)
        page.wait_for_timeout(1_000)
        assert page.evaluate("() => window.contradictions") == []
        expect(page.get_by_role("status").filter(has_text="Stopping")).to_have_count(0)
        dashboard.assert_no_page_errors()
    finally:
        for run_id in (first, second):
            api.post(f"/training/stop/{run_id}", params={"wait_s": 30})


def assert_charts_read_out_and_smooth(page: Page) -> None:
    """Hovering a chart reads out its step and value; the smoothing slider works from the keyboard."""
    reward = page.get_by_role("figure", name=re.compile("Reward"))
    # The plot's event layer lies over its canvas: move the mouse there without an actionability check.
    reward.locator("canvas").hover(force=True)
    legend = reward.get_by_role("table")
    expect(legend).to_contain_text(re.compile(r"step\s*:?\s*[\d,]+"))
    expect(legend).to_contain_text(re.compile(r"reward\s*:?\s*-?\d"))
    slider = page.get_by_role("slider", name="Smoothing")
    slider.focus()
    page.keyboard.press("End")
    expect(slider).to_have_value("0.99")
    for name in ("Reward", "Success rate", "Loss"):
        figure = page.get_by_role("figure", name=re.compile(name))
        expect(figure).to_contain_text(re.compile(r"latest .* \(smoothed .*\) at step"))


def test_form_says_its_limits_before_the_error_and_links_errors_to_inputs(
    keyed_context: BrowserContext, service: LiveService, api: httpx.Client
) -> None:
    schema = api.get("/openapi.json").raise_for_status().json()["components"]["schemas"]
    limits = schema["StartTrainingRequest"]["properties"]
    dashboard = new_tab(keyed_context, service)
    page = dashboard.page
    dashboard.open()
    page.get_by_text("Optional settings").click()
    for label, name in NUMBER_FIELDS.items():
        field = page.get_by_label(label, exact=False).first
        bounds = limits[name].get("anyOf", [limits[name]])[0]
        low, high = int(bounds["minimum"]), int(bounds["maximum"])
        assert (field.get_attribute("min"), field.get_attribute("max")) == (str(low), str(high)), label
        hint_ids = (field.get_attribute("aria-describedby") or "").split()
        hints = " ".join(page.locator(f"#{hint_id}").inner_text() for hint_id in hint_ids)
        assert f"{low:,}–{high:,}" in hints, (label, hints)
    episodes_hint = page.get_by_label("Total episodes").get_attribute("aria-describedby") or ""
    assert "training iterations" in page.locator(f"#{episodes_hint.split()[0]}").inner_text()

    violations = serious_accessibility_violations(page)
    assert violations == [], violations

    maze_size = page.get_by_label("Maze size")
    maze_size.fill("99")
    maze_size.press("Enter")  # submit from the keyboard
    expect(maze_size).to_have_attribute("aria-invalid", "true")
    described = (maze_size.get_attribute("aria-describedby") or "").split()
    messages = [page.locator(f"#{node_id}").inner_text() for node_id in described]
    expected = api.post(
        "/training/start",
        json={"algorithm": "PPO", "total_episodes": 20, "timesteps_per_episode": 512, "maze_size": 99},
    ).json()["detail"][0]["msg"]
    assert expected in messages, messages
    expect(page.get_by_label("Total episodes")).not_to_have_attribute("aria-invalid", "true")
    screenshot(page, "form-limits-and-error")
    violations = serious_accessibility_violations(page)
    assert violations == [], violations
    dashboard.assert_no_page_errors()


def test_runs_list_says_where_mlflow_data_is_without_a_ui(
    keyed_context: BrowserContext, service: LiveService, api: httpx.Client
) -> None:
    service.wait_for_mlflow()
    run_id = api.post("/training/start", json=ENDLESS_PPO).raise_for_status().json()["experiment_id"]
    try:
        dashboard = new_tab(keyed_context, service)
        page: Page = dashboard.page
        dashboard.open()
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=run_id[:8]))
        local = row.get_by_text("local store", exact=True)
        expect(local).to_be_visible(timeout=60_000)
        local.focus()
        page.keyboard.press("Enter")
        expect(row).to_contain_text(re.compile(r"mlflow ui --backend-store-uri \S+"))
        violations = serious_accessibility_violations(page)
        assert violations == [], violations
        screenshot(page, "runs-list-keyed")
    finally:
        api.post(f"/training/stop/{run_id}", params={"wait_s": 30})
