"""The dashboard at `/`, driven in headless Chromium against a real uvicorn service that really trains.

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
    PHONE,
    RUN_URL,
    Dashboard,
    launch_chromium,
    screenshot,
    serious_accessibility_violations,
    skip_or_fail,
    wait_until,
)
from tests.conftest import FINAL_STATES, LiveService

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:
    skip_or_fail("playwright is not installed (pip install -r requirements-dev.txt)", module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.service]

# One fixed 5x5 maze; PPO with the service's planner policy solves it within ~4k steps (measured: 0.5-4k).
SOLVABLE_PPO: dict[str, Any] = {
    "algorithm": "PPO",
    "total_episodes": 16,
    "timesteps_per_episode": 512,
    "maze_size": 5,
    "maze_mode": "fixed",
    "n_envs": 4,
    "seed": 7,
}
# Runs until stopped.
ENDLESS_PPO: dict[str, Any] = {**SOLVABLE_PPO, "total_episodes": 1500, "timesteps_per_episode": 128}
TRAINING_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path) -> Iterator[LiveService]:
    live = LiveService(tmp_path_factory.mktemp("dashboard") / "data", mlflow_store=mlflow_store_template)
    try:
        yield live.start()
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


def api_error(api: httpx.Client, body: dict[str, Any], field: str) -> str:
    """The message the API itself gives for `field` for this start request."""
    response = api.post("/training/start", json=body)
    assert response.status_code == 422, response.text
    messages = [item["msg"] for item in response.json()["detail"] if item["loc"] == ["body", field]]
    assert messages, response.text
    return str(messages[0])


def wait_for_exported_run(api: httpx.Client, run_id: str) -> dict[str, Any]:
    def exported() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/experiments/{run_id}").raise_for_status().json()
        if body["status"] in FINAL_STATES and body["status"] != "completed":
            raise AssertionError(f"run ended {body['status']}: {body['training'].get('error')}")
        onnx = body.get("onnx") or {}
        return (
            body if body["status"] == "completed" and onnx.get("status") in ("exported", "failed") else None
        )

    body: dict[str, Any] = wait_until(exported, TRAINING_TIMEOUT_S, f"run {run_id} completed and exported")
    assert body["onnx"]["status"] == "exported", body["onnx"]
    return body


def test_page_and_static_files_are_served(api: httpx.Client) -> None:
    page = api.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in page.text
    for path in ("/static/app.js", "/static/style.css", "/static/vendor/uplot/uPlot.esm.js"):
        assert api.get(path).status_code == 200, path
    assert api.get("/static/../main.py").status_code == 404


def test_form_shows_the_apis_validation_messages_next_to_fields(
    dashboard: Dashboard, api: httpx.Client
) -> None:
    too_big = {"algorithm": "PPO", "total_episodes": 20, "timesteps_per_episode": 512, "maze_size": 99}
    expected = api_error(api, too_big, "maze_size")
    dashboard.open()
    dashboard.fill_start_form({"maze_size": 99})
    dashboard.page.get_by_role("button", name="Start training").click()
    expect(dashboard.field_error("maze_size")).to_have_text(expected)
    expect(dashboard.page.locator('#start-form .field[data-field="maze_size"]')).to_have_class(
        re.compile("invalid")
    )
    expect(dashboard.field_error("total_episodes")).to_have_text("")
    screenshot(dashboard.page, "form-maze-size-error")

    bad_hyper = {**too_big, "maze_size": 5, "hyperparameters": {"not_a_knob": 1}}
    expected = api_error(api, bad_hyper, "hyperparameters")
    dashboard.fill_start_form({"maze_size": 5, "hyperparameters": '{"not_a_knob": 1}'})
    dashboard.page.get_by_role("button", name="Start training").click()
    expect(dashboard.field_error("hyperparameters")).to_have_text(expected)
    expect(dashboard.field_error("maze_size")).to_have_text("")

    dashboard.fill_start_form({"hyperparameters": "{oops"})
    dashboard.page.get_by_role("button", name="Start training").click()
    expect(dashboard.field_error("hyperparameters")).to_contain_text("not valid JSON")
    screenshot(dashboard.page, "form-hyperparameters-error")
    assert not RUN_URL.search(dashboard.page.url), "no run may start from an invalid form"

    dashboard.open("#/runs/00000000-0000-4000-8000-000000000000")
    expect(dashboard.page.locator("#d-status")).to_have_text("not found")
    expect(dashboard.page.locator("#d-message")).to_contain_text("No such run")
    dashboard.assert_no_page_errors()


def test_start_from_form_watch_live_progress_and_stop(dashboard: Dashboard, api: httpx.Client) -> None:
    page = dashboard.page
    dashboard.open()
    policy = page.get_by_label("Policy")
    expect(policy).to_have_value("planner")
    choices = policy.get_by_role("option")
    expect(choices).to_have_count(4)
    for index, name in enumerate(("planner", "planner_learned", "cnn", "mlp")):
        expect(choices.nth(index)).to_have_text(re.compile(rf"^{name} — \S.+"))  # each with its hint
    dashboard.fill_start_form({**ENDLESS_PPO, "target_success_rate": ""})  # cleared: no early end
    policy.select_option("cnn")
    with page.expect_request(lambda r: r.url.endswith("/training/start")) as start_request:
        page.get_by_role("button", name="Start training").click()
    sent = start_request.value.post_data_json
    assert sent is not None and sent["policy"] == "cnn", sent
    run_id = dashboard.run_id_from_url()
    assert api.get(f"/training/status/{run_id}").json()["policy"] == "cnn"
    expect(page.get_by_text(re.compile(r"^PPO · policy cnn · 5×5 fixed maze"))).to_be_visible()

    expect(page.locator("#d-socket")).to_have_attribute("data-state", "live", timeout=30_000)
    expect(page.locator("#d-status")).to_have_text("running", timeout=60_000)
    wait_until(lambda: dashboard.episode_shown() >= 2, 90, "episodes on the progress line")
    # Charts grow from WebSocket messages alone: the page loaded its history once, before these.
    before = dashboard.chart_points()
    messages_before = dashboard.ws_messages()
    wait_until(
        lambda: (
            dashboard.ws_messages() >= messages_before + 3
            and sum(dashboard.chart_points().values()) > sum(before.values())
        ),
        90,
        f"charts to grow from WebSocket messages (before: {before})",
    )
    fill = page.locator("#d-progress .progress-fill")
    width = float(fill.evaluate("(node) => parseFloat(node.style.width)"))
    assert width > 0, "the progress bar does not move"
    expect(page.locator("#d-progress-text")).to_contain_text(f"/ {ENDLESS_PPO['total_episodes']}")
    expect(page.locator("#d-progress-text")).to_contain_text("ETA")
    screenshot(page, "run-live")

    page.get_by_role("button", name="Stop run").click()
    expect(page.locator("#d-status")).to_have_text("stopped", timeout=90_000)
    expect(page.locator("#d-stop")).to_be_hidden()
    model_link = page.get_by_role("link", name="SB3 model (.zip)")
    expect(model_link).to_be_visible(timeout=30_000)
    href = model_link.get_attribute("href")
    assert href and api.get(href).status_code == 200
    screenshot(page, "run-stopped")
    # The ONNX export finishes after the run ends: the page looks again by itself and enables the player.
    expect(page.get_by_role("link", name="ONNX model")).to_be_visible(timeout=120_000)
    expect(page.get_by_role("button", name="Play", exact=True)).to_be_enabled()

    page.get_by_role("link", name="← All runs").click()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=re.compile(run_id[:8])))
    expect(row.get_by_role("cell", name="stopped", exact=True)).to_be_visible(timeout=15_000)
    expect(row.get_by_role("cell", name="PPO", exact=True)).to_be_visible()
    expect(row.get_by_role("cell", name="cnn", exact=True)).to_be_visible()  # the Policy column
    expect(row).to_contain_text("5×5 fixed")
    screenshot(page, "runs-list")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    screenshot(page, "runs-list-phone")
    dashboard.assert_no_page_errors()


def test_the_form_stops_at_a_95_percent_target_by_default_and_the_run_page_draws_the_held_out_curve(
    dashboard: Dashboard, api: httpx.Client
) -> None:
    page = dashboard.page
    dashboard.open()
    target = page.get_by_label("Stop at success rate")
    expect(target).to_be_visible()  # in the form's first lines, not under "Optional settings"
    expect(target).to_have_value("0.95")
    hint_id = (target.get_attribute("aria-describedby") or "").split()[0]
    expect(page.locator(f"#{hint_id}")).to_contain_text("solves 95% of held-out mazes")

    dashboard.fill_start_form(SOLVABLE_PPO)  # every field but the target
    page.get_by_role("button", name="Start training").click()
    run_id = dashboard.run_id_from_url()

    started = api.get(f"/training/status/{run_id}").raise_for_status().json()
    assert started["target_success_rate"] == 0.95, started
    body = wait_for_exported_run(api, run_id)
    assert body["training"]["stop_reason"] == "target_reached", body["training"]
    expect(page.locator("#d-status")).to_have_text("completed", timeout=30_000)
    evaluations = {p["step"] for p in body["history"]["eval_success_rate"]}
    assert evaluations, body["history"]
    held_out = page.get_by_role("figure", name=re.compile("Held-out success rate"))
    expect(held_out).to_have_attribute("data-points", str(len(evaluations)), timeout=15_000)
    expect(held_out).to_contain_text("100%")
    screenshot(page, "run-target-reached")
    dashboard.assert_no_page_errors()


def test_a_runs_name_and_tags_show_in_the_runs_table_and_on_its_page(
    dashboard: Dashboard, api: httpx.Client
) -> None:
    name, notes, model_name = "baseline maze run", "Reference run for the 5×5 maze.", "dashboard-maze-ppo"
    labels = {"name": name, "tags": {"team": "maze", "goal": "baseline"}, "notes": notes}
    short = {**SOLVABLE_PPO, "total_episodes": 2, "timesteps_per_episode": 128}
    started = api.post("/training/start", json={**short, **labels, "register_as": model_name})
    run_id = started.raise_for_status().json()["experiment_id"]
    page = dashboard.page
    dashboard.open()
    row = page.get_by_role("row", name=re.compile(name))
    expect(row).to_have_count(1, timeout=15_000)
    expect(row.get_by_role("link", name=f"{name} ({run_id[:8]})")).to_be_visible()
    expect(row).to_contain_text("team=maze")
    expect(row).to_contain_text("goal=baseline")
    screenshot(page, "runs-list-labels")

    row.get_by_role("link", name=re.compile(name)).click()
    assert dashboard.run_id_from_url() == run_id
    expect(page.get_by_role("heading", name=re.compile(f"Run “{name}”"))).to_be_visible()
    tags = page.get_by_role("list", name="Tags").get_by_role("listitem")
    expect(tags).to_have_text(["team=maze", "goal=baseline"])
    expect(page.get_by_text(notes)).to_be_visible()
    # Registered in the service's own MLflow store once the run ended: the page looks again by itself.
    expect(page.get_by_text(f"Registered in MLflow as {model_name}, version 1.")).to_be_visible(
        timeout=int(TRAINING_TIMEOUT_S * 1000)
    )
    screenshot(page, "run-labels")
    assert serious_accessibility_violations(page) == []  # the tag chips' contrast among others
    dashboard.assert_no_page_errors()


def test_completed_run_shows_history_downloads_and_rollout_reaches_goal(
    dashboard: Dashboard, api: httpx.Client
) -> None:
    run_id = api.post("/training/start", json=SOLVABLE_PPO).raise_for_status().json()["experiment_id"]
    body = wait_for_exported_run(api, run_id)
    page = dashboard.page
    dashboard.open(f"#/runs/{run_id}")
    expect(page.locator("#d-status")).to_have_text("completed")

    # A reload loses nothing: every history point from the API is drawn.
    # (One point per step: the final snapshot may log a step twice.)
    expected_points = {
        key: len({p["step"] for p in points}) for key, points in body["history"].items() if points
    }
    assert expected_points.get("reward"), f"no reward history to draw: {body['history']}"
    wait_until(
        lambda: all(dashboard.chart_points().get(key) == n for key, n in expected_points.items()),
        15,
        f"charts drawing the history {expected_points} (drawn: {dashboard.chart_points()})",
    )
    onnx_link = page.get_by_role("link", name="ONNX model")
    expect(onnx_link).to_be_visible()
    onnx_href = onnx_link.get_attribute("href")
    assert onnx_href and api.get(onnx_href).status_code == 200
    expect(page.get_by_role("link", name="SB3 model (.zip)")).to_be_visible()
    assert_download_sends_api_key(page, onnx_link, api.get(onnx_href).content)

    page.get_by_role("button", name="Play", exact=True).click()  # empty seed: the run's own fixed maze
    canvas = page.locator("#maze")
    expect(canvas).to_have_attribute("data-state", "done", timeout=30_000)
    result = page.locator("#rollout-result")
    expect(result).to_have_attribute("data-success", "true")
    expect(result).to_contain_text("Reached the goal")
    replay = api.post(f"/experiments/{run_id}/rollout", json={}).raise_for_status().json()
    goal = ",".join(str(v) for v in replay["goal"])
    expect(canvas).to_have_attribute("data-agent", goal)
    # The maze in words, for a screen reader.
    expect(page.get_by_role("img", name=re.compile(r"Reached the goal in \d+ steps"))).to_be_visible()
    screenshot(page, "rollout-desktop")

    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    screenshot(page, "rollout-phone")
    dashboard.assert_no_page_errors()


def assert_download_sends_api_key(page: Page, link: Any, expected: bytes) -> None:
    """A link cannot send X-API-Key: the dashboard fetches the file with the key the user entered.

    This service has no API_KEY (tests/test_security.py covers the check itself); here the request
    must carry the key, and the saved file must be the one the API serves.
    """
    page.evaluate("() => localStorage.setItem('rlmaze.apiKey', 'key-entered-by-the-user')")
    with (
        page.expect_request(lambda r: r.url.endswith("/model.onnx")) as request_info,
        page.expect_download() as download_info,
    ):
        link.click()
    assert request_info.value.headers.get("x-api-key") == "key-entered-by-the-user"
    download = download_info.value
    assert download.suggested_filename.endswith(".onnx"), download.suggested_filename
    path = download.path()
    assert path is not None and path.read_bytes() == expected
    page.evaluate("() => localStorage.removeItem('rlmaze.apiKey')")


def test_socket_reconnects_after_the_service_restarts(
    dashboard: Dashboard, service: LiveService, api: httpx.Client
) -> None:
    run_id = api.post("/training/start", json=ENDLESS_PPO).raise_for_status().json()["experiment_id"]
    page = dashboard.page
    dashboard.open(f"#/runs/{run_id}")
    expect(page.locator("#d-socket")).to_have_attribute("data-state", "live", timeout=30_000)
    wait_until(lambda: dashboard.ws_messages() >= 2, 60, "progress messages")

    service.kill()  # a crash: no goodbye on the socket
    expect(page.locator("#d-socket")).to_have_attribute("data-state", re.compile("waiting|reconnecting"))
    screenshot(page, "socket-disconnected")
    messages_before = dashboard.ws_messages()
    service.start()

    # The restarted service knows the run (now ended: its worker died) and the page catches up by itself.
    wait_until(lambda: dashboard.ws_messages() > messages_before, 90, "messages after the restart")
    expect(page.locator("#d-status")).to_have_text(re.compile("|".join(FINAL_STATES)), timeout=90_000)
    screenshot(page, "socket-reconnected")
    dashboard.assert_no_page_errors()
