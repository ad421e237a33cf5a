"""Runs tracked in MLflow (a local store and a real `mlflow server`), read back through /experiments."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from mlflow_client import TrackedRun, Tracker
from records.database import create_db_engine, make_session_factory, upgrade_schema
from records.store import RunStore
from records.tables import RunStatus
from tests.conftest import (
    FINAL_STATES,
    LONG_PPO,
    SMALL_RUN,
    TINY_DQN,
    TINY_PPO,
    LiveService,
    app_state,
    copy_mlflow_store,
    ended_mlflow_run,
    wait_for_mlflow,
    wait_for_status,
)
from tests.mlflow_server import MlflowServer


def run_to_end(client: TestClient | httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    wait_for_mlflow(client.get)  # else a tiny run can end before a fresh store has its MLflow run
    run_id = client.post("/training/start", json=body).json()["experiment_id"]
    final = wait_for_status(client.get, run_id, lambda s: s["status"] in FINAL_STATES)
    # The ONNX export and the last MLflow uploads follow the final state; the export is announced with it.
    assert final["onnx"] is not None, final
    return wait_for_status(
        client.get, run_id, lambda s: s["onnx"] is not None and s["onnx"]["status"] != "pending"
    )


@pytest.mark.training
def test_a_completed_run_is_in_mlflow_with_params_metrics_and_artifacts(client: TestClient) -> None:
    status = run_to_end(client, TINY_PPO)
    run_id = status["experiment_id"]
    assert app_state(client).tracker.flush(60)

    detail = client.get(f"/experiments/{run_id}").json()

    assert detail["mlflow_error"] is None
    assert detail["mlflow_run_id"] == status["mlflow_run_id"] is not None
    params = detail["params"]
    for key, value in {
        "algorithm": "PPO",
        "maze_size": "5",
        "seed": "7",
        "n_envs": "4",
        "device": "cpu",
    }.items():
        assert params[key] == value
    for key in (
        "learning_rate",
        "n_steps",
        "batch_size",
        "gamma",
        "torch_version",
        "stable_baselines3_version",
    ):
        assert key in params
    for key in ("reward", "success_rate", "loss", "policy_loss", "value_loss", "entropy_loss", "fps"):
        assert key in detail["metrics"], key
    # The run keeps its best evaluated model; MLflow has every evaluation, the last one as the latest.
    assert status["success_rate"] == status["best_eval_success_rate"]
    assert 0.0 <= detail["metrics"]["eval_success_rate"] <= status["best_eval_success_rate"]
    # One point per training iteration, at step = timesteps.
    assert [p["step"] for p in detail["history"]["reward"]][-1] == status["timesteps"]
    assert len(detail["history"]["loss"]) >= 2
    artifacts = {a["name"]: a for a in detail["artifacts"]}
    assert artifacts["sb3_model/model.zip"]["download_url"] == f"/experiments/{run_id}/model.zip"
    assert "onnx_model/MLmodel" in artifacts
    mlflow_run = ended_mlflow_run(app_state(client).settings.mlflow_tracking_uri, detail["mlflow_run_id"])
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["experiment_id"] == run_id


@pytest.mark.training
def test_a_stopped_run_is_killed_in_mlflow(client: TestClient) -> None:
    run_id = client.post("/training/start", json=LONG_PPO).json()["experiment_id"]
    wait_for_status(client.get, run_id, lambda s: s["timesteps"] > 0 and s["mlflow_run_id"] is not None)
    client.post(f"/training/stop/{run_id}")
    wait_for_status(client.get, run_id, lambda s: s["onnx"] is not None and s["onnx"]["status"] != "pending")
    assert app_state(client).tracker.flush(60)

    mlflow_run_id = client.get(f"/training/status/{run_id}").json()["mlflow_run_id"]
    mlflow_run = ended_mlflow_run(app_state(client).settings.mlflow_tracking_uri, mlflow_run_id)

    assert mlflow_run.info.status == "KILLED"


@pytest.mark.training
def test_experiments_are_paginated_newest_first_and_filterable(client: TestClient) -> None:
    ids = []
    for body in (TINY_PPO, TINY_DQN, TINY_PPO):
        ids.append(client.post("/training/start", json=body).json()["experiment_id"])
        time.sleep(0.01)
    for run_id in ids:
        wait_for_status(client.get, run_id, lambda s: s["status"] in FINAL_STATES)

    first_page = client.get("/experiments", params={"limit": 2}).json()
    second_page = client.get("/experiments", params={"limit": 2, "offset": 2}).json()
    dqn_only = client.get("/experiments", params={"algorithm": "DQN"}).json()
    completed = client.get("/experiments", params={"status": "completed"}).json()
    running = client.get("/experiments", params={"status": "running"}).json()

    assert first_page["total"] == 3
    assert [item["experiment_id"] for item in first_page["items"] + second_page["items"]] == ids[::-1]
    assert [item["experiment_id"] for item in dqn_only["items"]] == [ids[1]]
    assert completed["total"] == 3 and running["total"] == 0
    item = first_page["items"][0]
    assert item["algorithm"] == "PPO" and item["maze_size"] == 5 and item["status"] == "completed"
    assert item["progress"] == 1.0 and item["finished_at"] is not None and item["success_rate"] is not None
    assert client.get("/experiments", params={"status": "bogus"}).status_code == 422
    assert client.get("/experiments", params={"limit": 0}).status_code == 422


def test_unknown_experiments_are_404(client: TestClient) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    for path in ("", "/model.zip", "/model.onnx"):
        assert client.get(f"/experiments/{missing}{path}").status_code == 404
    assert client.post(f"/experiments/{missing}/rollout", json={}).status_code == 404
    assert client.get("/experiments/not-a-uuid").status_code == 422


@pytest.mark.training
def test_a_finished_runs_models_can_be_downloaded_played_and_evaluated(client: TestClient) -> None:
    status = run_to_end(client, TINY_PPO)
    run_id = status["experiment_id"]
    assert status["onnx"]["status"] == "exported", status

    onnx = client.get(f"/experiments/{run_id}/model.onnx")
    sb3 = client.get(f"/experiments/{run_id}/model.zip")
    played = client.post(f"/experiments/{run_id}/rollout", json={"maze_seed": 3})
    evaluated = client.post(f"/experiments/{run_id}/evaluate", json={"episodes": 4})

    run_dir = app_state(client).settings.run_dir(run_id)
    assert onnx.status_code == 200 and onnx.content == (run_dir / "model.onnx").read_bytes()
    assert sb3.status_code == 200 and sb3.content == (run_dir / "model.zip").read_bytes()
    rollout = played.json()
    assert played.status_code == 200, played.text
    assert rollout["maze_seed"] == 3 and len(rollout["grid"]) == 2 * TINY_PPO["maze_size"] + 1
    assert rollout["path"][0] == rollout["start"] and rollout["steps"] >= 1
    assert evaluated.status_code == 200, evaluated.text
    assert evaluated.json()["experiment_id"] == run_id and evaluated.json()["episodes"] == 4
    assert 0.0 <= evaluated.json()["success_rate"] <= 1.0


def record_finished_elsewhere(data_dir: Path, *, stopped_before_start: bool) -> str:
    """A run recorded in the service's database before it starts: stopped while still queued (nothing
    saved), or completed on another machine (model and ONNX export only in MLflow's artifact store)."""
    engine = create_db_engine(f"sqlite:///{data_dir / 'service.db'}")
    upgrade_schema(engine)
    store = RunStore(make_session_factory(engine))
    run = store.create(SMALL_RUN)
    if stopped_before_start:
        store.request_stop(run.id)
    else:
        assert store.claim_next_queued("ray-worker:4242:abcd", max_running=1) is not None
        store.record_mlflow_run(run.id, "0123456789abcdef")
        store.finish(run.id, RunStatus.COMPLETED, model_path="/on/the/worker/model.zip")
        store.record_onnx(run.id, onnx_status="exported")
    engine.dispose()
    return run.id


def test_a_run_without_models_answers_404_for_files_and_409_for_its_policy(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    run_id = record_finished_elsewhere(tmp_path / "data", stopped_before_start=True)
    client = make_client()

    onnx = client.get(f"/experiments/{run_id}/model.onnx")
    sb3 = client.get(f"/experiments/{run_id}/model.zip")
    played = client.post(f"/experiments/{run_id}/rollout", json={})
    evaluated = client.post(f"/experiments/{run_id}/evaluate", json={"episodes": 1})
    resumed = client.post(f"/training/resume/{run_id}")

    assert onnx.status_code == 404 and "no exported ONNX model" in onnx.json()["detail"]
    assert sb3.status_code == 404 and "no saved model.zip yet (status: stopped)" in sb3.json()["detail"]
    assert played.status_code == 409 and "no exported ONNX model yet" in played.json()["detail"]
    assert evaluated.status_code == 409 and evaluated.json() == played.json()
    assert resumed.status_code == 409 and "no checkpoint" in resumed.json()["detail"]


def test_files_only_in_an_unusable_artifact_store_answer_503(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    run_id = record_finished_elsewhere(tmp_path / "data", stopped_before_start=False)
    client = make_client(mlflow_tracking_uri="unsupported://mlflow-store")

    sb3 = client.get(f"/experiments/{run_id}/model.zip")
    played = client.post(f"/experiments/{run_id}/rollout", json={})
    detail = client.get(f"/experiments/{run_id}")

    assert sb3.status_code == 503
    assert "artifact store holding model.zip is unavailable" in sb3.json()["detail"]
    assert played.status_code == 503 and "model.onnx" in played.json()["detail"]
    # The run's own record is still served, with the reason the MLflow part is missing.
    assert detail.status_code == 200 and detail.json()["status"] == "completed"
    assert detail.json()["mlflow_error"].startswith("MLflow unavailable: ")


def test_tracking_to_a_real_mlflow_server(
    live_service: Callable[..., LiveService], mlflow_server: MlflowServer
) -> None:
    service = live_service(MLFLOW_TRACKING_URI=mlflow_server.uri)
    with service.client() as http:
        assert http.get("/health").json()["mlflow"]["ok"] is True
        status = run_to_end(http, TINY_DQN)
        detail = wait_for_status(
            lambda _path: http.get(f"/experiments/{status['experiment_id']}"),
            status["experiment_id"],
            lambda d: any(a["name"] == "onnx_model/model.onnx" for a in d["artifacts"]),
            timeout_s=60,
        )

    assert detail["mlflow_url"].startswith(f"{mlflow_server.uri}/#/experiments/")
    assert detail["metrics"]["td_loss"] == detail["metrics"]["loss"]
    # The ONNX model's first file is listed before the rest of its upload and the run's end.
    server_run = ended_mlflow_run(mlflow_server.uri, detail["mlflow_run_id"])
    assert server_run.info.status == "FINISHED"
    assert server_run.data.params["algorithm"] == "DQN"


def test_an_mlflow_outage_neither_stops_training_nor_loses_metrics(
    # The server first: fixtures end in reverse order, so the service stops (and flushes) while it is up.
    private_mlflow_server: MlflowServer,
    live_service: Callable[..., LiveService],
) -> None:
    server = private_mlflow_server
    service = live_service(MLFLOW_TRACKING_URI=server.uri)
    # ~20 s of training here: it outlasts the outage and the restart (~10 s); should a faster machine
    # finish it during the outage instead, every metric must still arrive: the checks hold either way.
    body = {**TINY_PPO, "total_episodes": 60}
    service.wait_for_mlflow()
    with service.client() as http:
        run_id = http.post("/training/start", json=body).json()["experiment_id"]
        wait_for_status(http.get, run_id, lambda s: s["mlflow_run_id"] is not None and s["episode"] >= 2)

        server.kill()
        degraded = wait_for_status(
            http.get, run_id, lambda s: s["tracking_status"] == "degraded", timeout_s=60
        )
        assert degraded["status"] == "running"
        assert http.get("/health").json()["mlflow"]["ok"] is False
        before = degraded["timesteps"]
        still_training = wait_for_status(http.get, run_id, lambda s: s["timesteps"] > before + 500)
        assert still_training["status"] == "running"

        server.start()
        final = wait_for_status(http.get, run_id, lambda s: s["status"] in FINAL_STATES, timeout_s=300)
        assert final["status"] == "completed"
        recovered = wait_for_status(http.get, run_id, lambda s: s["tracking_status"] == "ok", timeout_s=120)
        assert recovered["tracking_status"] == "ok"

    # "ok" comes with the first send that succeeds; the rest of the backlog follows it (a run that ended
    # during the outage has all of it still to send), so wait for it, within a bound.
    expected = list(range(1, body["total_episodes"] + 1))
    deadline = time.monotonic() + 60
    while True:
        history = MlflowClient(server.uri).get_metric_history(final["mlflow_run_id"], "rollout/episode")
        logged = sorted({int(point.value) for point in history})
        if logged == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert logged == expected, "every iteration's metrics arrived"


@pytest.fixture
def tracker(tmp_path: Path, mlflow_store_template: Path) -> Iterator[Tracker]:
    """A Tracker of its own on a local MLflow store in tmp_path (`tracker.tracking_uri`)."""
    copy_mlflow_store(mlflow_store_template, tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tracker-tests", tmp_path / "artifacts")
    yield tracker
    tracker.close()


def start_tracking(tracker: Tracker, run_key: str) -> TrackedRun:
    return tracker.start_run(run_key, run_key, {"experiment_id": run_key})


def test_after_a_flush_mlflow_holds_everything_logged_before_it(tracker: Tracker) -> None:
    """`Tracker.flush` is what shutdown and remote jobs rely on before they report: once it returns
    True, every operation queued before it (merged metric batches and the run's end included) is in
    the store."""
    tracked = start_tracking(tracker, "run-1")
    for step in range(300):  # queued faster than sent: the sender merges them into batches
        tracker.log_metrics(tracked, {"reward": float(step)}, step)
    tracker.end_run(tracked, "completed")

    assert tracker.flush(120)

    assert tracked.mlflow_run_id is not None
    client = MlflowClient(tracker.tracking_uri)
    assert len(client.get_metric_history(tracked.mlflow_run_id, "reward")) == 300
    assert client.get_run(tracked.mlflow_run_id).info.status == "FINISHED"


def test_a_resumed_run_is_running_again_in_mlflow(tracker: Tracker) -> None:
    """Resume continues the same MLflow run, which the interruption had ended as KILLED."""
    client = MlflowClient(tracker.tracking_uri)
    first = start_tracking(tracker, "run-1")
    tracker.end_run(first, "interrupted")
    assert tracker.flush(120)
    assert first.mlflow_run_id is not None
    assert client.get_run(first.mlflow_run_id).info.status == "KILLED"

    resumed = start_tracking(tracker, "run-1")
    assert tracker.flush(120)

    assert resumed.mlflow_run_id == first.mlflow_run_id
    assert client.get_run(first.mlflow_run_id).info.status == "RUNNING"


def test_an_orphaned_mlflow_run_is_closed_unless_it_was_resumed_meanwhile(tracker: Tracker) -> None:
    orphan, resumed = start_tracking(tracker, "orphan"), start_tracking(tracker, "resumed")
    assert tracker.flush(120)
    assert orphan.mlflow_run_id is not None and resumed.mlflow_run_id is not None

    tracker.close_orphan(orphan.mlflow_run_id, "interrupted", resumed=lambda: False)
    tracker.close_orphan(resumed.mlflow_run_id, "interrupted", resumed=lambda: True)
    assert tracker.flush(120)

    client = MlflowClient(tracker.tracking_uri)
    assert client.get_run(orphan.mlflow_run_id).info.status == "KILLED"
    assert client.get_run(resumed.mlflow_run_id).info.status == "RUNNING"
