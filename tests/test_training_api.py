"""A user starts, watches and stops real (tiny) training runs over HTTP against the real app."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from stable_baselines3 import DQN, PPO

import maze_env
from tests.conftest import FINAL_STATES, LONG_PPO, TINY_DQN, TINY_PPO, app_state, wait_for_status

pytestmark = pytest.mark.training


def start(client: TestClient, body: dict[str, Any]) -> str:
    response = client.post("/training/start", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["status"] == "started"
    uuid.UUID(payload["experiment_id"])
    return str(payload["experiment_id"])


@pytest.mark.parametrize(("body", "algo_class"), [(TINY_PPO, PPO), (TINY_DQN, DQN)], ids=["PPO", "DQN"])
def test_run_trains_to_completion_and_saves_a_loadable_model(
    client: TestClient, body: dict[str, Any], algo_class: type[PPO] | type[DQN]
) -> None:
    sb3_dirs_before = set(Path(tempfile.gettempdir()).glob("SB3-*"))
    run_id = start(client, body)

    status = wait_for_status(client.get, run_id, lambda s: s["status"] in FINAL_STATES)
    # SB3's default logger leaves an empty temp directory per run; a service must not pile them up.
    assert set(Path(tempfile.gettempdir()).glob("SB3-*")) == sb3_dirs_before

    assert status["status"] == "completed", status
    total = body["total_episodes"] * body["timesteps_per_episode"]
    assert status["total_timesteps"] == total
    assert status["timesteps"] >= total
    assert status["episode"] == status["total_episodes"] == body["total_episodes"]
    assert status["progress"] == 1.0
    assert status["device"] == "cpu"
    assert status["fps"] > 0
    assert status["maze_episodes"] > 0
    assert status["reward"] is not None
    assert 0.0 <= status["success_rate"] <= 1.0
    assert status["success_rate"] == status["eval_success_rate"]
    assert status["eta_s"] is None and status["elapsed_s"] > 0
    assert status["finished_at"] is not None and status["error"] is None
    assert status["model_available"] is True
    model = algo_class.load(Path(app_state(client).settings.models_dir) / run_id / "model.zip")
    assert model.num_timesteps >= total


def test_status_shows_live_progress_while_training(client: TestClient) -> None:
    run_id = start(client, LONG_PPO)

    status = wait_for_status(client.get, run_id, lambda s: s["timesteps"] > 0 and s["fps"] is not None)

    assert status["status"] == "running"
    assert status["total_episodes"] == LONG_PPO["total_episodes"]
    assert status["eta_s"] is not None and status["eta_s"] > 0
    assert status["started_at"] is not None and status["finished_at"] is None
    client.post(f"/training/stop/{run_id}")


def test_stop_saves_the_model_and_is_idempotent(client: TestClient) -> None:
    run_id = start(client, LONG_PPO)
    wait_for_status(client.get, run_id, lambda s: s["timesteps"] > 0)

    began = time.monotonic()
    response = client.post(f"/training/stop/{run_id}")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "stopped"
    assert time.monotonic() - began < 15
    status = client.get(f"/training/status/{run_id}").json()
    assert status["status"] == "stopped"
    assert status["model_available"] is True
    assert 0 < status["timesteps"] < status["total_timesteps"]
    again = client.post(f"/training/stop/{run_id}")
    assert again.status_code == 200
    assert again.json()["status"] == "stopped"
    assert "already stopped" in again.json()["message"]


def test_stopping_a_completed_run_changes_nothing(client: TestClient) -> None:
    run_id = start(client, TINY_PPO)
    wait_for_status(client.get, run_id, lambda s: s["status"] in FINAL_STATES)

    response = client.post(f"/training/stop/{run_id}")

    assert response.status_code == 200
    assert response.json() == {
        "experiment_id": run_id,
        "status": "completed",
        "message": "run already completed; nothing to stop",
    }


def test_runs_beyond_the_cap_are_queued_then_started(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_concurrent_runs=1)
    first = client.post("/training/start", json=LONG_PPO).json()
    second = client.post("/training/start", json=LONG_PPO).json()
    assert first["run_status"] == "running"
    assert second["run_status"] == "queued"
    assert client.get(f"/training/status/{second['experiment_id']}").json()["status"] == "queued"

    client.post(f"/training/stop/{first['experiment_id']}")

    wait_for_status(client.get, second["experiment_id"], lambda s: s["status"] == "running", timeout_s=30)
    stopped = client.post(f"/training/stop/{second['experiment_id']}").json()
    assert stopped["status"] == "stopped"


def test_a_queued_run_can_be_stopped_before_it_starts(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_concurrent_runs=1)
    running = start(client, LONG_PPO)
    queued = start(client, LONG_PPO)

    response = client.post(f"/training/stop/{queued}")

    assert response.json()["status"] == "stopped"
    status = client.get(f"/training/status/{queued}").json()
    assert status["started_at"] is None and status["model_available"] is False
    client.post(f"/training/stop/{running}")


def test_the_api_answers_quickly_while_runs_train(client: TestClient) -> None:
    run_ids = [start(client, LONG_PPO), start(client, {**LONG_PPO, "algorithm": "DQN"})]
    wait_for_status(client.get, run_ids[1], lambda s: s["timesteps"] > 0)

    latencies = []
    for _ in range(40):
        began = time.perf_counter()
        assert client.get(f"/training/status/{run_ids[0]}").status_code == 200
        latencies.append(time.perf_counter() - began)
        time.sleep(0.02)

    latencies.sort()
    # Generous bounds: a starved event loop (torch using every core, no GIL release) takes seconds. The
    # 95th percentile rather than the maximum: one stall of a loaded CI machine is not the service's.
    assert latencies[len(latencies) // 2] < 0.25, latencies
    assert latencies[int(len(latencies) * 0.95) - 1] < 1.0, latencies
    for run_id in run_ids:
        client.post(f"/training/stop/{run_id}")


def test_hyperparameter_overrides_are_used(client: TestClient) -> None:
    body = {**TINY_PPO, "hyperparameters": {"learning_rate": 0.0005, "n_epochs": 2, "gamma": 0.9}}
    run_id = start(client, body)
    wait_for_status(client.get, run_id, lambda s: s["status"] in FINAL_STATES)

    record = app_state(client).run_store.get(run_id)
    assert record.effective_hyperparameters["learning_rate"] == 0.0005
    assert record.effective_hyperparameters["n_epochs"] == 2
    assert record.effective_hyperparameters["gamma"] == 0.9
    # One "episode" of progress is one PPO rollout: timesteps_per_episode / n_envs steps per env.
    assert (
        record.effective_hyperparameters["n_steps"] == TINY_PPO["timesteps_per_episode"] // TINY_PPO["n_envs"]
    )


def test_a_run_that_crashes_is_failed_with_the_reason_and_others_continue(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broken environment cannot be requested through the API, so inject one fault: mazes of size 6
    # raise inside step(), on the training thread, as a bug in an environment would.
    original_step = maze_env.MazeEnv.step

    def faulty_step(self: maze_env.MazeEnv, action: Any) -> Any:
        if self.maze.size == 6:
            raise RuntimeError("simulated environment fault")
        return original_step(self, action)

    monkeypatch.setattr(maze_env.MazeEnv, "step", faulty_step)
    healthy = start(client, LONG_PPO)
    broken = start(client, {**TINY_PPO, "maze_size": 6})

    failed = wait_for_status(client.get, broken, lambda s: s["status"] in FINAL_STATES)

    assert failed["status"] == "failed", failed
    assert failed["error"] == "RuntimeError: simulated environment fault"
    still = wait_for_status(client.get, healthy, lambda s: s["timesteps"] > 0)
    assert still["status"] == "running"
    assert client.get("/health").status_code == 200
    assert client.post(f"/training/stop/{healthy}").json()["status"] == "stopped"
