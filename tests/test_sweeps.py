"""Sweeps end to end on real training with tiny budgets: trials as runs, pruning, the best trial in
MLflow, stop, a restart in the middle, and validation errors."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from api.schemas.sweeps import SweepRequest
from records.database import create_db_engine, make_session_factory, upgrade_schema
from records.store import EvaluationState, RunStore
from records.tables import RunStatus, StopReason
from sweeps.driver import trial_request
from sweeps.pruning import TrialPruning
from sweeps.study import close_storage, create_study, load_study
from tests.conftest import SMALL_RUN, app_client, app_state, ended_mlflow_run, wait_for_status

# Six 5x5-maze PPO trials of 2 iterations each, evaluated after every iteration.
TINY_SWEEP: dict[str, Any] = {
    "algorithm": "PPO",
    "maze_size": 5,
    "total_episodes": 2,
    "timesteps_per_episode": 128,
    "n_envs": 4,
    "seed": 7,
    "eval_every_episodes": 1,
    "eval_episodes": 5,
    "n_trials": 6,
    "parallel_trials": 2,
    "search_space": {"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}},
}
# Trials that train until stopped.
LONG_SWEEP: dict[str, Any] = {**TINY_SWEEP, "total_episodes": 100_000, "n_trials": 2, "parallel_trials": 1}


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


def start_sweep(client: TestClient, body: dict[str, Any]) -> str:
    created = client.post("/sweeps", json=body)
    assert created.status_code == 200, created.text
    return str(created.json()["sweep_id"])


@pytest.mark.training
def test_a_six_trial_sweep_completes_and_reports_its_best_trial_to_mlflow(client: TestClient) -> None:
    sweep_id = start_sweep(client, TINY_SWEEP)

    sweep = wait_for_sweep(client, sweep_id, lambda s: s["status"] == "completed", timeout_s=400)

    trials = sweep["trials"]
    assert [t["number"] for t in trials] == list(range(6))
    assert all(t["state"] == "complete" for t in trials), trials
    assert len({t["run_id"] for t in trials}) == 6
    for trial in trials:
        run = client.get(f"/training/status/{trial['run_id']}").json()
        assert run["status"] == "completed" and run["stop_reason"] == "budget_exhausted"
        assert (run["sweep_id"], run["sweep_trial"]) == (sweep_id, trial["number"])
        assert 1e-4 <= trial["params"]["learning_rate"] <= 1e-2
        assert trial["success_rate"] == max(trial["evaluations"].values())
        assert set(trial["evaluations"]) == {"128", "256"}  # the last evaluation is reported too
    best = max(trials, key=lambda t: (t["objective"], -t["number"]))
    assert sweep["best_trial"]["number"] == best["number"]
    assert sweep["best_run_id"] == best["run_id"]
    # The trials are the sweep's runs in /experiments, each naming its sweep and trial number.
    listed = client.get("/experiments", params={"sweep_id": sweep_id}).json()
    assert listed["total"] == 6
    assert {(item["experiment_id"], item["sweep_id"], item["sweep_trial"]) for item in listed["items"]} == {
        (t["run_id"], sweep_id, t["number"]) for t in trials
    }
    best_run = client.get(f"/experiments/{best['run_id']}").json()
    assert (best_run["sweep_id"], best_run["sweep_trial"]) == (sweep_id, best["number"])

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


# On 3x3 mazes a learning rate of 1e-3 solves most held-out mazes after one update (85% measured with
# seed 14), while 1e-9 learns nothing (0% at every evaluation). Seed 14 draws 1e-3, 1e-9, 1e-9.
PRUNABLE_SWEEP: dict[str, Any] = {
    **TINY_SWEEP,
    "maze_size": 3,
    "seed": 14,
    "total_episodes": 3,
    "eval_episodes": 20,
    "n_trials": 3,
    "parallel_trials": 1,
    "search_space": {"learning_rate": {"type": "categorical", "choices": [1e-3, 1e-9]}},
    "pruner": {"n_startup_trials": 1, "n_warmup_evaluations": 1},  # aggressive
}


@pytest.mark.training
def test_an_aggressive_pruner_prunes_the_trials_below_the_median(client: TestClient) -> None:
    sweep_id = start_sweep(client, PRUNABLE_SWEEP)

    sweep = wait_for_sweep(client, sweep_id, lambda s: s["status"] == "completed", timeout_s=400)

    trials = sweep["trials"]
    assert [t["params"]["learning_rate"] for t in trials] == [1e-3, 1e-9, 1e-9]
    assert [t["state"] for t in trials] == ["complete", "pruned", "pruned"], [
        t["evaluations"] for t in trials
    ]
    for trial in trials[1:]:
        run = client.get(f"/training/status/{trial['run_id']}").json()
        assert run["status"] == "completed" and run["stop_reason"] == "pruned"
        assert run["timesteps"] < run["total_timesteps"]
        assert trial["objective"] is None and trial["error"] is None
    assert sweep["best_trial"]["number"] == 0 and sweep["best_run_id"] == trials[0]["run_id"]


def check_pruning_rule(url: str) -> None:
    """The job's pruning rule on a real study: one completed trial that evaluated at 0.8, then a trial
    evaluating at 0.1 at the same step is pruned; one at 0.9 is not."""
    engine = create_db_engine(url)
    upgrade_schema(engine)  # ours first, as at start-up: Optuna's tables then live next to ours
    request = {**TINY_SWEEP, "pruner": {"enabled": True, "n_startup_trials": 1, "n_warmup_evaluations": 0}}
    try:
        create_study(url, "s1", request)
        study = load_study(url, "s1")
        done = study.ask()
        done.report(0.8, 128)
        study.tell(done, 0.8)
        weak, strong = study.ask(), study.ask()

        def evaluation(rate: float) -> EvaluationState:
            return EvaluationState(rate, rate, 128, 0, 0, rate, rate, 128)

        assert TrialPruning(url, "s1", weak.number)(evaluation(0.1)) is StopReason.PRUNED
        assert TrialPruning(url, "s1", strong.number)(evaluation(0.9)) is None
        assert load_study(url, "s1").trials[weak.number].intermediate_values == {128: 0.1}
        upgrade_schema(engine)  # a restart: our migrations still find their own revision
    finally:
        close_storage(url)
        engine.dispose()


def test_the_median_pruner_prunes_a_trial_below_the_completed_ones(tmp_path: Path) -> None:
    check_pruning_rule(f"sqlite:///{tmp_path / 'runs.db'}")


def test_the_study_lives_in_postgresql_next_to_our_tables(postgres_url: str) -> None:
    check_pruning_rule(postgres_url)


@pytest.mark.training
def test_stop_ends_the_sweep_and_its_running_trial(client: TestClient) -> None:
    sweep_id = start_sweep(client, LONG_SWEEP)
    sweep = wait_for_sweep(client, sweep_id, lambda s: bool(s["trials"]) and s["trials"][0]["run_id"])
    run_id = sweep["trials"][0]["run_id"]
    wait_for_status(client.get, run_id, lambda s: s["status"] == "running")

    stopped = client.post(f"/sweeps/{sweep_id}/stop")

    assert stopped.status_code == 200 and stopped.json()["status"] in ("stopping", "stopped")
    sweep = wait_for_sweep(client, sweep_id, lambda s: s["status"] == "stopped")
    assert [t["state"] for t in sweep["trials"]] == ["fail"]
    assert "stopped" in sweep["trials"][0]["error"]
    assert client.get(f"/training/status/{run_id}").json()["status"] == "stopped"
    assert client.post(f"/sweeps/{sweep_id}/stop").json()["status"] == "stopped"  # again: no change


@pytest.mark.training
def test_a_sweep_goes_on_after_a_restart(tmp_path: Path, mlflow_store_template: Path) -> None:
    data_dir = tmp_path / "data"
    body = {**LONG_SWEEP, "total_episodes": 12}
    with app_client(data_dir, mlflow_store_template) as client:
        sweep_id = start_sweep(client, body)
        sweep = wait_for_sweep(
            client, sweep_id, lambda s: bool(s["trials"]) and s["trials"][0]["evaluations"]
        )
        first_run = sweep["trials"][0]["run_id"]
    # The service shut down mid-trial: its run ended interrupted, with its model saved.
    with app_client(data_dir, mlflow_store_template) as client:
        sweep = wait_for_sweep(client, sweep_id, lambda s: s["status"] == "completed", timeout_s=400)
        assert [t["state"] for t in sweep["trials"]] == ["complete", "complete"]
        assert sweep["trials"][0]["run_id"] == first_run  # resumed, not started again
        status = client.get(f"/training/status/{first_run}").json()
        assert status["status"] == "completed" and status["timesteps"] >= status["total_timesteps"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"n_trials": 0}, "n_trials", "greater than or equal to 1"),
        ({"parallel_trials": True}, "parallel_trials", "integer"),
        (
            {"search_space": {"gamma_x": {"type": "uniform", "low": 0.9, "high": 0.99}}},
            "search_space",
            "gamma_x",
        ),
        (
            {"search_space": {"learning_rate": {"type": "log_uniform", "low": 0.1, "high": 0.01}}},
            "search_space",
            "must not exceed",
        ),
        (
            {"search_space": {"n_epochs": {"type": "uniform", "low": 1, "high": 5}}},
            "search_space",
            "integers",
        ),
        (
            {"search_space": {"gamma": {"type": "categorical", "choices": [0.9, 2.0]}}},
            "search_space",
            "gamma",
        ),
        ({"pruner": {"n_startup_trials": -1}}, "pruner", "greater than or equal to 0"),
        ({"maze_size": 99}, "maze_size", "less than or equal"),
        ({"policy": "resnet"}, "policy", "'planner_learned'"),
        ({"timesteps_per_episode": 4}, "timesteps_per_episode", "n_envs"),
    ],
)
def test_bad_sweeps_are_422_naming_the_field(
    module_client: TestClient, change: dict[str, Any], field: str, words: str
) -> None:
    response = module_client.post("/sweeps", json={**TINY_SWEEP, **change})

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(field in item["loc"] and words in item["msg"] for item in detail), detail


def test_every_trial_trains_the_sweeps_policy() -> None:
    request = SweepRequest.model_validate({**TINY_SWEEP, "policy": "planner_learned"}).model_dump()
    assert trial_request(request, {"learning_rate": 1e-3}).policy == "planner_learned"
    # A sweep stored before `policy` existed has none in its request: its trials train the default.
    del request["policy"]
    assert trial_request(request, {"learning_rate": 1e-3}).policy == "planner"


def test_an_unknown_sweep_is_404(module_client: TestClient) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    assert module_client.get(f"/sweeps/{missing}").status_code == 404
    assert module_client.post(f"/sweeps/{missing}/stop").status_code == 404


def test_runs_name_their_sweep_and_experiments_filter_by_it(
    tmp_path: Path, mlflow_store_template: Path
) -> None:
    # Finished runs recorded before the service starts: two trials of one sweep, one trial of another
    # sweep, and a run started by hand.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    engine = create_db_engine(f"sqlite:///{data_dir / 'service.db'}")
    upgrade_schema(engine)
    store = RunStore(make_session_factory(engine))
    sweep_id, other_sweep = str(uuid.uuid4()), str(uuid.uuid4())
    trials = [store.create(dataclasses.replace(SMALL_RUN, sweep_id=sweep_id, sweep_trial=n)) for n in (0, 1)]
    other = store.create(dataclasses.replace(SMALL_RUN, sweep_id=other_sweep, sweep_trial=0))
    by_hand = store.create(SMALL_RUN)
    for run in [*trials, other, by_hand]:
        store.finish(run.id, RunStatus.COMPLETED, stop_reason=StopReason.BUDGET_EXHAUSTED.value)
    engine.dispose()

    with app_client(data_dir, mlflow_store_template) as client:
        listed = client.get("/experiments", params={"sweep_id": sweep_id}).json()
        everything = client.get("/experiments").json()
        trial = client.get(f"/experiments/{trials[1].id}").json()
        status = client.get(f"/training/status/{trials[1].id}").json()
        hand_status = client.get(f"/training/status/{by_hand.id}").json()
        bad = client.get("/experiments", params={"sweep_id": "not-a-uuid"})

    assert listed["total"] == 2
    assert {(item["experiment_id"], item["sweep_trial"]) for item in listed["items"]} == {
        (trials[0].id, 0),
        (trials[1].id, 1),
    }
    assert all(item["sweep_id"] == sweep_id for item in listed["items"])
    assert everything["total"] == 4
    by_id = {item["experiment_id"]: item for item in everything["items"]}
    assert (by_id[other.id]["sweep_id"], by_id[by_hand.id]["sweep_id"]) == (other_sweep, None)
    assert (trial["sweep_id"], trial["sweep_trial"]) == (sweep_id, 1)
    assert trial["training"]["sweep_id"] == sweep_id
    assert (status["sweep_id"], status["sweep_trial"]) == (sweep_id, 1)
    assert (hand_status["sweep_id"], hand_status["sweep_trial"]) == (None, None)
    assert bad.status_code == 422
    assert any(item["loc"] == ["query", "sweep_id"] for item in bad.json()["detail"]), bad.json()


@pytest.mark.training
def test_two_workers_never_run_the_same_trial(make_client: Callable[..., TestClient]) -> None:
    # Two apps on one database are two workers: both drive the sweep, each trial gets exactly one run.
    first, second = make_client(), make_client()
    body = {**TINY_SWEEP, "total_episodes": 1, "n_trials": 4, "pruner": {"enabled": False}}
    sweep_id = start_sweep(first, body)

    sweep = wait_for_sweep(second, sweep_id, lambda s: s["status"] == "completed", timeout_s=400)

    assert [t["state"] for t in sweep["trials"]] == ["complete"] * 4
    runs, _ = app_state(first).run_store.list_runs(limit=100)
    trial_runs = [run for run in runs if run.sweep_id == sweep_id]
    assert sorted(run.sweep_trial for run in trial_runs) == [0, 1, 2, 3]
