"""The MLflow UI, in headless Chromium, against the store the service tracks into: the experiment opens
in the classic model-training view (not the GenAI/traces one) and shows the run, its name, tags and
metrics (screenshots in test-artifacts/)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.browser import DESKTOP, launch_chromium, screenshot
from tests.conftest import TINY_PPO, app_state, ended_mlflow_run
from tests.mlflow_server import MlflowServer
from tests.test_experiments import run_to_end

UI_TIMEOUT_MS = 90_000


@pytest.mark.browser
@pytest.mark.training
def test_the_mlflow_ui_opens_the_experiment_in_the_classic_view_with_the_run_and_its_metrics(
    make_client: Callable[..., TestClient], private_mlflow_server: MlflowServer
) -> None:
    client = make_client(mlflow_tracking_uri=private_mlflow_server.uri)
    labels = {"name": "ui-check", "tags": {"team": "maze"}}
    status = run_to_end(client, {**TINY_PPO, **labels})
    assert app_state(client).tracker.flush(60)
    mlflow_run = ended_mlflow_run(private_mlflow_server.uri, status["mlflow_run_id"])
    experiment_id = mlflow_run.info.experiment_id

    with launch_chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        # MLflow 3.17 opens in its "GenAI" mode whatever the experiment's kind tag says (seen here); the
        # classic view is its "Model training" mode. The UI takes the mode from the `workflowType` URL
        # parameter before its remembered choice (its own switch links there): clicking the switch
        # instead failed under load, the first-visit popovers swallowing every click.
        page.goto(f"{private_mlflow_server.uri}/#/experiments/{experiment_id}?workflowType=machine_learning")
        run_link = page.get_by_text("ui-check").first
        try:
            run_link.wait_for(timeout=UI_TIMEOUT_MS)
        finally:
            screenshot(page, "mlflow-ui-experiment")
        experiment_page = page.inner_text("body")

        run_url = f"{private_mlflow_server.uri}/#/experiments/{experiment_id}/runs/{status['mlflow_run_id']}"
        page.goto(f"{run_url}/model-metrics")
        page.get_by_text("success_rate").first.wait_for(timeout=UI_TIMEOUT_MS)
        page.wait_for_timeout(2000)  # the chart sections render after the first names
        screenshot(page, "mlflow-ui-run-metrics")
        metrics_page = page.inner_text("body")

    # The classic view: the runs table (our run, by its name) and no GenAI evaluation pages.
    assert "1 matching run" in experiment_page and "Evaluation runs" not in experiment_page
    assert "Model registry" in experiment_page
    # Metrics are grouped by prefix: one section per kind, named after it.
    sections = set(
        re.findall(r"^(rollout|train|eval|time|export)\s*\(\d+\)$", metrics_page, flags=re.MULTILINE)
    )
    assert sections == {"rollout", "train", "eval", "time", "export"}, metrics_page[:3000]
