"""EXECUTOR=ray against a real local Ray cluster, PostgreSQL and an MLflow server.

The Ray task workers have a DATA_DIR of their own, so everything the user gets (downloads, rollouts) must come
through the database and the MLflow artifact store, as on a real multi-machine cluster. One cluster
and one service serve all tests of this module; each test starts its own run.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import onnx
import pytest
from websockets.sync.client import connect

from tests.conftest import FINAL_STATES, LiveService, wait_for_status
from tests.mlflow_server import MlflowServer
from tests.postgres_server import PostgresServer
from tests.ray_cluster import RayCluster

pytestmark = pytest.mark.service

# Tiny runs: a few iterations of 256 steps on a 5 × 5 maze.
RAY_PPO: dict[str, Any] = {
    "algorithm": "PPO",
    "total_episodes": 3,
    "timesteps_per_episode": 256,
    "maze_size": 5,
    "n_envs": 4,
    "seed": 11,
}
RAY_DQN: dict[str, Any] = {
    "algorithm": "DQN",
    "total_episodes": 3,
    "timesteps_per_episode": 256,
    "maze_size": 5,
    "n_envs": 2,
    "seed": 11,
    "hyperparameters": {"learning_starts": 100, "buffer_size": 5000},
}
ENDLESS_PPO: dict[str, Any] = {**RAY_PPO, "total_episodes": 100_000}


@pytest.fixture(scope="module")
def ray_service(
    ray_cluster: RayCluster,
    postgres_server: PostgresServer,
    mlflow_server: MlflowServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveService]:
    database = postgres_server.create_database()
    service = LiveService(
        tmp_path_factory.mktemp("ray-service") / "data",
        env={
            "EXECUTOR": "ray",
            "RAY_ADDRESS": ray_cluster.address,
            "RAY_STOP_GRACE_S": "10",
            "DATABASE_URL": postgres_server.url(database),
            "MLFLOW_TRACKING_URI": mlflow_server.uri,
            # An experiment of our own: its artifacts live on the server, not in another test's dir.
            "MLFLOW_EXPERIMENT_NAME": f"ray-{uuid.uuid4().hex[:8]}",
            "CHECKPOINT_EVERY_EPISODES": "0",
            **ray_cluster.auth_env,
        },
    )
    try:
        yield service.start()
    finally:
        service.stop()
        postgres_server.drop_database(database)


def watch_until_final(service: LiveService, run_id: str, timeout_s: float = 240) -> list[dict[str, Any]]:
    """Every WebSocket message of a run, through its final one."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    with connect(f"ws://127.0.0.1:{service.port}/ws/training/{run_id}") as ws:
        while time.monotonic() < deadline:
            messages.append(json.loads(ws.recv(timeout=max(1.0, deadline - time.monotonic()))))
            if messages[-1]["type"] == "final":
                return messages
    raise AssertionError(f"no final message for {run_id}; got {messages[-3:]}")


def start(http: httpx.Client, body: dict[str, Any]) -> str:
    response = http.post("/training/start", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["experiment_id"])


@pytest.mark.parametrize("body", [RAY_PPO, RAY_DQN], ids=["PPO", "DQN"])
def test_a_run_trains_on_the_cluster_and_everything_reaches_the_user_without_a_shared_disk(
    ray_service: LiveService, ray_cluster: RayCluster, body: dict[str, Any]
) -> None:
    with ray_service.client() as http:
        run_id = start(http, body)
        messages = watch_until_final(ray_service, run_id)
        status = wait_for_status(http.get, run_id, lambda s: (s["onnx"] or {}).get("status") == "exported")
        detail = http.get(f"/experiments/{run_id}").json()
        onnx_file = http.get(f"/experiments/{run_id}/model.onnx")
        sb3_file = http.get(f"/experiments/{run_id}/model.zip")
        rollout = http.post(f"/experiments/{run_id}/rollout", json={"maze_seed": 3})

    progress = [m for m in messages if m["type"] == "progress" and m["status"] == "running"]
    assert progress and messages[-1]["status"] == "completed", messages[-3:]
    # Progress never goes back, and the final message carries the whole budget. (The remote job can
    # train these 768 steps between two messages, so the running ones may all still say 0: seen once
    # on a loaded machine.)
    timesteps = [m["timesteps"] for m in [*progress, messages[-1]]]
    assert timesteps == sorted(timesteps) and timesteps[-1] == status["total_timesteps"] > 0, timesteps
    assert status["status"] == "completed" and status["timesteps"] == status["total_timesteps"]
    assert status["model_available"] is True and status["onnx"]["parity_passed"] is True

    assert detail["mlflow_error"] is None, detail["mlflow_error"]
    assert {"reward", "episode", "fps", "eval_success_rate"} <= set(detail["metrics"])
    assert detail["params"]["algorithm"] == body["algorithm"]
    assert {"sb3_model/model.zip", "onnx_model/model.onnx"} <= {a["name"] for a in detail["artifacts"]}
    assert detail["model_zip_url"] == f"/experiments/{run_id}/model.zip"

    assert onnx_file.status_code == 200
    assert onnx.load_model_from_string(
        onnx_file.content
    ).metadata_props  # a real ONNX model, with our metadata
    assert sb3_file.status_code == 200 and sb3_file.content[:2] == b"PK"
    assert rollout.status_code == 200, rollout.text
    # The worker trained and saved in its own directory; the service only holds copies it fetched.
    assert (ray_cluster.worker_data_dir / "runs" / run_id / "model.zip").is_file()
    assert not (ray_service.data_dir / "runs" / run_id / "model.zip").exists()
    cached = list((ray_service.data_dir / "artifact-cache" / run_id).glob("*/model.onnx"))
    assert len(cached) == 1 and cached[0].read_bytes() == onnx_file.content


def test_stop_reaches_a_run_on_a_remote_worker_within_seconds(
    ray_service: LiveService, ray_cluster: RayCluster
) -> None:
    with ray_service.client() as http:
        run_id = start(http, ENDLESS_PPO)
        wait_for_status(http.get, run_id, lambda s: s["timesteps"] > 0, timeout_s=180)
        training_processes = ray_cluster.task_processes(task_name(run_id))
        asked_at = time.monotonic()
        stopped = http.post(f"/training/stop/{run_id}", params={"wait_s": 30}).json()
        took_s = time.monotonic() - asked_at
        final = wait_for_status(http.get, run_id, lambda s: s["status"] in FINAL_STATES)
        model = http.get(f"/experiments/{run_id}/model.zip")

    assert stopped["status"] == "stopped" and final["status"] == "stopped", final
    assert took_s < 10, f"stop took {took_s:.1f} s"
    assert 0 < final["timesteps"] < final["total_timesteps"]
    assert model.status_code == 200 and model.content[:2] == b"PK"
    assert len(training_processes) == 1, "the run did not train in a Ray worker process"
    assert _wait_gone(ray_cluster, run_id), "the training process is still busy after the stop"


def test_killing_the_worker_process_marks_its_run_failed(
    ray_service: LiveService, ray_cluster: RayCluster
) -> None:
    with ray_service.client() as http:
        run_id = start(http, ENDLESS_PPO)
        wait_for_status(http.get, run_id, lambda s: s["timesteps"] > 0, timeout_s=180)
        pids = ray_cluster.task_processes(task_name(run_id))
        assert len(pids) == 1, f"expected one training process, found {pids}"
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.monotonic()
        final = wait_for_status(http.get, run_id, lambda s: s["status"] in FINAL_STATES, timeout_s=60)
        noticed_s = time.monotonic() - killed_at
        # The slot is free again: the next run trains.
        next_run = start(http, RAY_PPO)
        after = wait_for_status(http.get, next_run, lambda s: s["status"] in FINAL_STATES, timeout_s=240)

    assert final["status"] == "failed", final
    assert "Ray worker" in final["error"] and "ActorDiedError" in final["error"], final["error"]
    assert noticed_s < 15, f"took {noticed_s:.1f} s to notice"
    assert after["status"] == "completed", after


def task_name(run_id: str) -> str:
    """What Ray shows as the process title of the actor training a run (`ray::RunTrainer...`); one
    run trains at a time in these tests."""
    return "RunTrainer"


def _wait_gone(cluster: RayCluster, run_id: str, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not cluster.task_processes(task_name(run_id)):
            return True
        time.sleep(0.2)
    return False


def test_sigterm_saves_remote_runs_as_interrupted_and_resume_continues_on_the_cluster(
    ray_service: LiveService, ray_cluster: RayCluster
) -> None:
    with ray_service.client() as http:
        run_id = start(http, ENDLESS_PPO)
        wait_for_status(http.get, run_id, lambda s: s["timesteps"] > 0, timeout_s=180)
    assert ray_service.process is not None
    ray_service.process.terminate()
    exit_code = ray_service.process.wait(timeout=60)
    shutdown_log = ray_service.log_tail(20_000)
    ray_service.start()
    with ray_service.client() as http:
        interrupted = http.get(f"/training/status/{run_id}").json()
        resumed = http.post(f"/training/resume/{run_id}")
        assert resumed.status_code == 200, resumed.text
        wait_for_status(
            http.get, run_id, lambda s: s["status"] == "running" and s["timesteps"] > interrupted["timesteps"]
        )
        final = http.post(f"/training/stop/{run_id}", params={"wait_s": 30}).json()

    # uvicorn re-raises the SIGTERM it handled once shut down: -15 after a complete graceful shutdown.
    assert exit_code in (0, -signal.SIGTERM), f"exit code {exit_code}"
    assert "Application shutdown complete" in shutdown_log
    assert interrupted["status"] == "interrupted", interrupted
    assert interrupted["model_available"] is True and interrupted["timesteps"] > 0
    # The service has no model of this run (only its log, `service-log.jsonl`): the resumed worker took
    # the saved model from MLflow.
    kept_here = [p.name for p in (ray_service.data_dir / "runs" / run_id).rglob("*") if p.is_file()]
    assert set(kept_here) <= {"service-log.jsonl"}, kept_here
    assert final["status"] == "stopped"
