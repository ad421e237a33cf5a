"""A user sets a success target: the run evaluates its policy on held-out mazes while it trains, ends as
soon as it is good enough, keeps the best model, says why it ended, and honours a stop within seconds."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from stable_baselines3 import DQN, PPO

import maze_env
from agents.evaluation import evaluate_with
from agents.onnx_policy import OnnxPolicy
from records.views import progress_message
from tests.conftest import FINAL_STATES, TINY_PPO, app_state, ended_mlflow_run, wait_for_status

pytestmark = pytest.mark.training

EVAL_EPISODES = 20
# Random 5x5 mazes: the planner's prior alone solves about two thirds of them, all of them never in 4
# training iterations.
EVALUATED_PPO: dict[str, Any] = {
    **TINY_PPO,
    "total_episodes": 4,
    "eval_every_episodes": 1,
    "eval_episodes": EVAL_EPISODES,
}


def start(client: TestClient, body: dict[str, Any]) -> str:
    response = client.post("/training/start", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["experiment_id"])


def exported(client: TestClient, run_id: str) -> dict[str, Any]:
    """The run's status once it ended and its ONNX export is done."""
    return wait_for_status(
        client.get,
        run_id,
        lambda s: s["status"] in FINAL_STATES and s["onnx"] is not None and s["onnx"]["status"] != "pending",
        timeout_s=300,
    )


def saved_timesteps(client: TestClient, run_id: str, filename: str) -> int:
    response = client.get(f"/experiments/{run_id}/{filename}")
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert "policy.pth" in archive.namelist()
    return int(PPO.load(io.BytesIO(response.content), device="cpu").num_timesteps)


def test_a_reachable_target_ends_the_run_early_with_the_best_model(client: TestClient) -> None:
    body = {**EVALUATED_PPO, "total_episodes": 50, "target_success_rate": 0.3}
    run_id = start(client, body)

    status = exported(client, run_id)

    assert status["status"] == "completed" and status["stop_reason"] == "target_reached", status
    assert status["timesteps"] < status["total_timesteps"]
    assert status["best_eval_success_rate"] >= 0.3
    assert status["success_rate"] == status["eval_success_rate"] == status["best_eval_success_rate"]
    # It ended at the evaluation that reached the target: that model is the best and the last one.
    assert saved_timesteps(client, run_id, "model.zip") == status["best_eval_timesteps"]
    assert client.get(f"/experiments/{run_id}/last_model.zip").status_code == 404
    summary = client.get("/experiments").json()["items"][0]
    assert summary["experiment_id"] == run_id and summary["stop_reason"] == "target_reached"
    state = app_state(client)
    message = progress_message(state.run_store.get(run_id), state.settings)
    assert message["type"] == "final" and message["stop_reason"] == "target_reached"
    assert message["best_eval_success_rate"] == status["best_eval_success_rate"]
    assert state.tracker.flush(60)
    mlflow_run = ended_mlflow_run(state.settings.mlflow_tracking_uri, status["mlflow_run_id"])
    assert mlflow_run.data.tags["stop_reason"] == "target_reached"


def test_an_unreachable_target_trains_the_whole_budget_and_offers_the_best_model(
    client: TestClient, tmp_path: Path
) -> None:
    run_id = start(client, {**EVALUATED_PPO, "target_success_rate": 1.0})

    status = exported(client, run_id)

    assert status["status"] == "completed" and status["stop_reason"] == "budget_exhausted", status
    assert status["timesteps"] >= status["total_timesteps"]
    assert status["eval_timesteps"] == status["timesteps"], "the last model is evaluated too"
    assert status["onnx"]["status"] == "exported"
    # The ONNX model offered is the best one: the same held-out mazes give the recorded best.
    evaluation = client.post(f"/experiments/{run_id}/evaluate", json={"episodes": EVAL_EPISODES})
    assert evaluation.status_code == 200, evaluation.text
    assert evaluation.json()["success_rate"] == status["best_eval_success_rate"]
    assert evaluation.json()["path_efficiency"] == pytest.approx(status["best_eval_path_efficiency"])
    # And the file a user downloads, played here on the run's held-out mazes, scores the recorded best.
    download = client.get(f"/experiments/{run_id}/model.onnx")
    assert download.status_code == 200, download.text
    (tmp_path / "downloaded.onnx").write_bytes(download.content)
    policy = OnnxPolicy(tmp_path / "downloaded.onnx")
    mine = evaluate_with(policy.predict, TINY_PPO["maze_size"], maze_env.eval_maze_seeds(EVAL_EPISODES))
    assert mine.success_rate == status["best_eval_success_rate"]
    assert mine.path_efficiency == pytest.approx(status["best_eval_path_efficiency"])
    assert saved_timesteps(client, run_id, "model.zip") == status["best_eval_timesteps"]
    if status["best_eval_timesteps"] == status["timesteps"]:
        assert client.get(f"/experiments/{run_id}/last_model.zip").status_code == 404
    else:
        assert saved_timesteps(client, run_id, "last_model.zip") == status["timesteps"]
    # One MLflow point per evaluation, at the run's timestep: after each iteration, then the last model.
    assert app_state(client).tracker.flush(60)
    detail = client.get(f"/experiments/{run_id}").json()
    history = app_state(client).tracker.runs.metric_history(detail["mlflow_run_id"], "eval_success_rate")
    steps = [step for step, _ in history]
    step = TINY_PPO["timesteps_per_episode"]
    assert steps == [step, 2 * step, 3 * step, status["timesteps"]]


def test_a_stop_during_a_long_evaluation_is_honoured_within_seconds(client: TestClient) -> None:
    # 5,000 mazes of 30x30, the most there can be of the largest size: minutes of evaluation for a policy
    # this young. (5,000 of 10x10 took under 2 s on a quiet machine once the planner kept its value maps.)
    body = {**TINY_PPO, "maze_size": 30, "total_episodes": 20, "eval_episodes": 5000}
    run_id = start(client, body)
    wait_for_status(client.get, run_id, lambda s: s["timesteps"] >= TINY_PPO["timesteps_per_episode"])
    time.sleep(2)  # inside the first evaluation

    began = time.monotonic()
    response = client.post(f"/training/stop/{run_id}", params={"wait_s": 30})

    assert response.json()["status"] == "stopped", response.text
    assert time.monotonic() - began < 15
    status = client.get(f"/training/status/{run_id}").json()
    assert status["stop_reason"] == "stopped" and status["eval_timesteps"] is None
    assert status["model_available"] is True


def test_hyperparameters_that_could_never_stop_are_refused_naming_the_key(client: TestClient) -> None:
    unstoppable = {
        "algorithm": "DQN",
        "total_episodes": 2,
        "timesteps_per_episode": 64,
        "maze_size": 6,
        "hyperparameters": {
            "learning_starts": 0,
            "gradient_steps": 1_000_000_000,
            "train_freq": 1,
            "batch_size": 1,
        },
    }
    endless = {**unstoppable, "hyperparameters": {"train_freq": 1_000_000_000_000}}
    huge_rollout = {**TINY_PPO, "hyperparameters": {"n_steps": 100_000}}

    for body, key in ((unstoppable, "gradient_steps"), (endless, "train_freq"), (huge_rollout, "n_steps")):
        response = client.post("/training/start", json=body)
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", f"hyperparameters.{key}"]
        assert error["msg"].startswith(f"{key}:") and "must be at most" in error["msg"]
    assert client.get("/experiments").json()["total"] == 0


def test_a_dqn_with_a_long_gradient_phase_stops_within_seconds(client: TestClient) -> None:
    # Each update is 1,000 gradient steps on batches of 512: minutes between two env steps.
    body = {
        "algorithm": "DQN",
        "total_episodes": 100,
        "timesteps_per_episode": 64,
        "maze_size": 5,
        "n_envs": 1,
        "seed": 3,
        "hyperparameters": {"learning_starts": 0, "gradient_steps": 1000, "train_freq": 1, "batch_size": 512},
    }
    run_id = start(client, body)
    wait_for_status(client.get, run_id, lambda s: s["device"] is not None)
    time.sleep(3)  # inside the first update

    began = time.monotonic()
    response = client.post(f"/training/stop/{run_id}", params={"wait_s": 30})

    assert response.json()["status"] == "stopped", response.text
    assert time.monotonic() - began < 15
    model = DQN.load(app_state(client).settings.run_dir(run_id) / "model.zip", device="cpu")
    assert model.num_timesteps < 5


def test_a_resumed_run_continues_its_evaluation_schedule_and_best_so_far(client: TestClient) -> None:
    step = TINY_PPO["timesteps_per_episode"]
    run_id = start(client, {**EVALUATED_PPO, "total_episodes": 1000, "target_success_rate": 1.0})
    wait_for_status(client.get, run_id, lambda s: (s["eval_timesteps"] or 0) >= 2 * step)
    client.post(f"/training/stop/{run_id}", params={"wait_s": 30})
    stopped = client.get(f"/training/status/{run_id}").json()
    assert stopped["status"] == "stopped" and stopped["stop_reason"] == "stopped"

    assert client.post(f"/training/resume/{run_id}").status_code == 200
    resumed = wait_for_status(
        client.get, run_id, lambda s: (s["eval_timesteps"] or 0) >= stopped["eval_timesteps"] + 2 * step
    )
    client.post(f"/training/stop/{run_id}", params={"wait_s": 30})

    assert resumed["stop_reason"] is None
    # Training went on from the last model, not from the best one.
    assert resumed["eval_timesteps"] > stopped["timesteps"]
    # Every iteration evaluated, in step with the run's iterations, and the best never went back.
    assert resumed["eval_timesteps"] % step == 0
    best = (stopped["best_eval_success_rate"], stopped["best_eval_path_efficiency"])
    assert (resumed["best_eval_success_rate"], resumed["best_eval_path_efficiency"]) >= best
    if resumed["best_eval_timesteps"] == stopped["best_eval_timesteps"]:
        assert resumed["best_eval_success_rate"] == stopped["best_eval_success_rate"]
    else:
        assert resumed["best_eval_timesteps"] > stopped["timesteps"]
