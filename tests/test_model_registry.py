"""A run started with `register_as` hands its model on through the MLflow model registry: a new version of
that registered model, whose source is the run's logged model, carrying the held-out success rate; on a
real `mlflow server` and on the service's default local store. A registry failure never fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from mlflow.entities import LoggedModel
from mlflow.tracking import MlflowClient

import maze_env
from agents.onnx_policy import OnnxPolicy
from api.schemas.training import MAX_REGISTERED_MODEL_NAME_LENGTH
from tests.conftest import FINAL_STATES, TINY_PPO, LiveService, app_state, wait_for_status
from tests.mlflow_server import MlflowServer

# Loads a registered model version with MLflow alone (no code of this project imported) and predicts.
PREDICT = """
import sys
import mlflow.pyfunc
import numpy as np

model = mlflow.pyfunc.load_model(sys.argv[1])
np.save(sys.argv[3], np.asarray(model.predict(np.load(sys.argv[2]))["action"]))
"""


def registered(get: Callable[[str], Any], run_id: str) -> dict[str, Any]:
    """The run's status once it has ended and its registration is no longer pending."""
    return wait_for_status(
        get,
        run_id,
        lambda s: s["status"] in FINAL_STATES and s["registered_model"]["status"] != "pending",
        timeout_s=180,
    )


def logged_model_of(client: MlflowClient, experiment_id: str, mlflow_run_id: str) -> LoggedModel:
    models = [m for m in client.search_logged_models([experiment_id]) if m.source_run_id == mlflow_run_id]
    assert len(models) == 1, models
    return models[0]


def unique_name() -> str:
    return f"maze-ppo-{uuid.uuid4().hex[:8]}"  # a session's tests share one mlflow server


def test_a_run_registered_on_a_tracking_server_is_a_new_version_of_its_logged_model_with_its_success(
    live_service: Callable[..., LiveService], mlflow_server: MlflowServer
) -> None:
    service = live_service(MLFLOW_TRACKING_URI=mlflow_server.uri)
    experiment_id = service.wait_for_mlflow()
    name = unique_name()
    with service.client() as http:
        started = http.post("/training/start", json={**TINY_PPO, "register_as": name})
        assert started.status_code == 200, started.text
        run_id = started.json()["experiment_id"]
        status = registered(http.get, run_id)
        detail = http.get(f"/experiments/{run_id}").json()
    assert status["status"] == "completed", status
    assert status["registered_model"] == {"name": name, "status": "registered", "version": 1, "error": None}
    assert detail["registered_model"] == status["registered_model"]

    client = MlflowClient(mlflow_server.uri)
    model = logged_model_of(client, experiment_id, status["mlflow_run_id"])
    version = client.get_model_version(name, "1")
    assert version.source == f"models:/{model.model_id}"
    assert version.run_id == status["mlflow_run_id"]
    # The held-out success rate of the model kept (the best evaluation's) is a metric of the logged model,
    # which the MLflow UI shows on the model version.
    metrics = {metric.key: metric for metric in model.metrics or []}
    assert status["best_eval_success_rate"] is not None
    assert metrics["eval/best_eval_success_rate"].value == pytest.approx(status["best_eval_success_rate"])
    assert metrics["eval/best_eval_success_rate"].step == status["best_eval_timesteps"]
    assert metrics["eval/best_eval_path_efficiency"].value == pytest.approx(
        detail["training"]["best_eval_path_efficiency"]
    )


@pytest.mark.training
def test_the_default_local_store_holds_the_registry_and_a_second_run_is_the_next_version(
    client: TestClient, tmp_path: Path
) -> None:
    settings = app_state(client).settings
    assert settings.mlflow_tracking_uri.startswith("sqlite:///")  # the default: data/mlflow.db
    name = unique_name()
    statuses = []
    for seed in (7, 8):
        started = client.post("/training/start", json={**TINY_PPO, "seed": seed, "register_as": name})
        assert started.status_code == 200, started.text
        statuses.append(registered(client.get, started.json()["experiment_id"]))
    assert [s["registered_model"]["version"] for s in statuses] == [1, 2], statuses
    assert {s["registered_model"]["status"] for s in statuses} == {"registered"}

    mlflow = MlflowClient(settings.mlflow_tracking_uri)
    experiment_id = client.get("/health").json()["mlflow_experiment_id"]
    for number, status in enumerate(statuses, start=1):
        model = logged_model_of(mlflow, experiment_id, status["mlflow_run_id"])
        version = mlflow.get_model_version(name, str(number))
        # A local store's version points at the logged model's files (see register_logged_model).
        assert (version.run_id, version.source) == (status["mlflow_run_id"], model.artifact_location)
        metrics = {metric.key: metric.value for metric in model.metrics or []}
        assert metrics["eval/best_eval_success_rate"] == pytest.approx(status["best_eval_success_rate"])

    # The registered version loads with MLflow alone and acts as the service's ONNX model.
    observations = np.stack(
        [
            maze_env.MazeEnv(maze_size=5, maze_mode="fixed", seed=seed).reset()[0]
            for seed in maze_env.eval_maze_seeds(20)
        ]
    )
    observations_file, actions_file = tmp_path / "observations.npy", tmp_path / "actions.npy"
    np.save(observations_file, observations)
    subprocess.run(
        [sys.executable, "-c", PREDICT, f"models:/{name}/2", str(observations_file), str(actions_file)],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri},
        check=True,
        timeout=300,
    )
    onnx_file = tmp_path / "policy.onnx"
    onnx_file.write_bytes(client.get(f"/experiments/{statuses[1]['experiment_id']}/model.onnx").content)
    np.testing.assert_array_equal(np.load(actions_file), OnnxPolicy(onnx_file).predict(observations))


@pytest.mark.training
def test_a_registry_that_refuses_the_name_leaves_the_run_completed_and_says_why(client: TestClient) -> None:
    settings = app_state(client).settings
    name = unique_name()
    # The name is already taken by an MLflow prompt (kept in the same registry).
    MlflowClient(settings.mlflow_tracking_uri).register_prompt(name, "Solve the maze {{maze}}")
    started = client.post("/training/start", json={**TINY_PPO, "register_as": name})
    run_id = started.json()["experiment_id"]
    status = registered(client.get, run_id)
    assert status["status"] == "completed", status
    assert status["onnx"]["status"] == "exported"
    model = status["registered_model"]
    assert (model["name"], model["status"], model["version"]) == (name, "failed", None), model
    assert "prompt" in model["error"]
    events = [record["event"] for record in client.get(f"/experiments/{run_id}/logs").json()["records"]]
    assert "model_registration_failed" in events


@pytest.mark.parametrize(
    "name",
    ["", "team/model", "models:maze", "has space", "-leading-dash", "quote'd", "x" * 129, 42],
    ids=["empty", "slash", "colon", "space", "dash-first", "quote", "too-long", "number"],
)
def test_a_registered_model_name_mlflow_would_refuse_is_a_422_naming_the_field(
    module_client: TestClient, name: Any
) -> None:
    assert MAX_REGISTERED_MODEL_NAME_LENGTH < 129
    response = module_client.post("/training/start", json={**TINY_PPO, "register_as": name})
    assert response.status_code == 422, response.text
    assert [item["loc"] for item in response.json()["detail"]] == [["body", "register_as"]]


def test_register_as_without_mlflow_is_a_422_that_says_so(make_client: Callable[..., TestClient]) -> None:
    client = make_client(mlflow_enabled=False)
    response = client.post("/training/start", json={**TINY_PPO, "register_as": "maze-ppo"})
    assert response.status_code == 422, response.text
    [item] = response.json()["detail"]
    assert item["loc"] == ["body", "register_as"]
    assert "MLFLOW_ENABLED" in item["msg"]
