"""Sweeps end to end on real training with tiny budgets: trials as runs, pruning, the best trial in
MLflow, stop, a restart in the middle, and validation errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from tests.conftest import app_client, app_state, ended_mlflow_run

# Six 5x5-maze PPO trials of 3 iterations each, evaluated after every iteration.
TINY_SWEEP: dict[str, Any] = {
    "algorithm": "PPO",
    "maze_size": 5,
    "total_episodes": 3,
    "timesteps_per_episode": 128,
    "n_envs": 4,
    "seed": 7,
    "eval_every_episodes": 1,
    "eval_episodes": 20,  # the planner's prior alone solves about two thirds of these mazes
    "n_trials": 6,
    "parallel_trials": 2,
}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def wait_for_sweep(
    client: TestClient, sweep_id: str, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 180.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/sweeps/{sweep_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if predicate(body):
            return body
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting on sweep {sweep_id}; last: {body}")


def test_a_six_trial_sweep_completes_prunes_and_reports_its_best_trial_to_mlflow(client: TestClient) -> None:
    # Aggressive pruning: after one completed trial, any trial below the median at an evaluation ends.
    body = {
        **TINY_SWEEP,
        # A learning rate of 0.9 wrecks the policy at once; which trials draw it follows from the seed.
        "search_space": {"learning_rate": {"type": "categorical", "choices": [1e-3, 0.9]}},
        "pruner": {"n_startup_trials": 1, "n_warmup_evaluations": 0},
    }
    created = client.post("/sweeps", json=body)
    assert created.status_code == 200, created.text
    sweep_id = created.json()["sweep_id"]

    sweep = wait_for_sweep(client, sweep_id, lambda s: s["status"] == "completed")

    trials = sweep["trials"]
    assert [t["number"] for t in trials] == list(range(6))
    assert all(t["state"] in ("complete", "pruned") for t in trials), trials
    assert len({t["run_id"] for t in trials}) == 6
    for trial in trials:
        run = client.get(f"/training/status/{trial['run_id']}").json()
        assert run["status"] == "completed"
        assert (run["stop_reason"] == "pruned") == (trial["state"] == "pruned")
        assert set(trial["params"]) == {"learning_rate"}
    assert any(t["state"] == "pruned" for t in trials), [(t["params"], t["evaluations"]) for t in trials]
    completed = [t for t in trials if t["state"] == "complete"]
    best = max(completed, key=lambda t: (t["objective"], -t["number"]))
    assert sweep["best_trial"]["number"] == best["number"]
    assert sweep["best_run_id"] == best["run_id"]
    assert best["success_rate"] == max(best["evaluations"].values())

    # MLflow: the parent run carries the best trial; the trials are its children.
    tracking_uri = app_state(client).settings.mlflow_tracking_uri
    parent = ended_mlflow_run(tracking_uri, sweep["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_objective"] == pytest.approx(best["objective"])
    assert parent.data.metrics["best_success_rate"] == pytest.approx(best["success_rate"])
    assert float(parent.data.params["best.learning_rate"]) == pytest.approx(best["params"]["learning_rate"])
    assert parent.data.tags["best_run_id"] == best["run_id"]
    children = MlflowClient(tracking_uri).search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert {child.data.tags["experiment_id"] for child in children} == {t["run_id"] for t in trials}

    listed = client.get("/sweeps").json()
    assert listed["total"] == 1 and listed["items"][0]["sweep_id"] == sweep_id
