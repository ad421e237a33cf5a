"""Organising runs: names, tags and notes at start, PATCH, filters, the MLflow run's name and tags, DELETE."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from api.schemas.labels import LabelsUpdate
from records.database import create_db_engine, make_session_factory, upgrade_schema
from records.labels import label_filters, merge_labels
from records.store import RunStore
from records.tables import RunStatus
from tests.conftest import LONG_PPO, SMALL_RUN, TINY_PPO, app_state, ended_mlflow_run, wait_for_status
from tests.test_experiments import run_to_end


def labelled_store(database_url: str) -> RunStore:
    engine = create_db_engine(database_url)
    upgrade_schema(engine)
    store = RunStore(make_session_factory(engine))
    for name, tags in [
        ("PPO baseline", {"team": "maze", "goal": "baseline"}),
        ("ppo-100%_big", {"team": "maze", "goal": "scale"}),
        ("dqn trial", {"team": "other"}),
        (None, None),
    ]:
        store.create(dataclasses.replace(SMALL_RUN, name=name, tags=tags))
    return store


def names(store: RunStore, q: str | None = None, tags: tuple[str, ...] = ()) -> set[str | None]:
    runs, total = store.list_runs(where=label_filters(q, tags))
    assert total == len(runs)
    return {run.name for run in runs}


def check_filters(store: RunStore) -> None:
    assert names(store, "ppo") == {"PPO baseline", "ppo-100%_big"}  # any case
    assert names(store, "100%") == {"ppo-100%_big"}  # % and _ are literal, not wildcards
    assert names(store, "_") == {"ppo-100%_big"}
    assert names(store, tags=("team:maze",)) == {"PPO baseline", "ppo-100%_big"}
    assert names(store, tags=("team:maze", "goal:scale")) == {"ppo-100%_big"}
    assert names(store, tags=("goal",)) == {"PPO baseline", "ppo-100%_big"}
    assert names(store, tags=("team:nobody",)) == set()
    assert names(store, "trial", ("team:other",)) == {"dqn trial"}


def test_name_search_and_tag_filters_on_sqlite(tmp_path: Path) -> None:
    check_filters(labelled_store(f"sqlite:///{tmp_path / 'runs.db'}"))


def test_name_search_tag_filters_and_label_changes_on_postgresql(postgres_url: str) -> None:
    store = labelled_store(postgres_url)
    check_filters(store)
    run = store.list_runs(where=label_filters("baseline", ()))[0][0]
    patch = LabelsUpdate.model_validate({"tags": {"goal": None, "new": "x"}, "notes": "n"})
    changed = store.update_labels(run.id, lambda current: merge_labels(current, patch).values)
    assert changed.tags == {"team": "maze", "new": "x"} and changed.notes == "n"
    assert names(store, tags=("new:x",)) == {"PPO baseline"}
    assert store.delete_final(run.id) is False  # queued: kept
    store.finish(run.id, RunStatus.FAILED, error="test")
    assert store.delete_final(run.id) is True
    assert store.delete_final(run.id) is False


def test_merge_patch_sets_removes_and_clears_labels(tmp_path: Path) -> None:
    store = labelled_store(f"sqlite:///{tmp_path / 'runs.db'}")
    run = store.list_runs(where=label_filters("baseline", ()))[0][0]
    change = merge_labels(run, LabelsUpdate.model_validate({"tags": {"goal": None, "a": "1"}, "name": None}))
    assert change.values == {"tags": {"team": "maze", "a": "1"}, "name": None}
    # A cleared name gives the MLflow run its default name back; removed tags are deleted there.
    assert change.mlflow_tags == {"a": "1", "mlflow.runName": f"PPO-maze5-{run.id[:8]}"}
    assert change.mlflow_removed == ["goal"]
    assert merge_labels(run, LabelsUpdate.model_validate({"tags": None})).values == {"tags": {}}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"tags": {"bad key": "x"}}, ["body", "tags", "bad key", "[key]"]),
        ({"tags": {"mlflow.user": "x"}}, ["body", "tags"]),
        ({"tags": {"experiment_id": "x"}}, ["body", "tags"]),
        ({"tags": {"k": "x" * 257}}, ["body", "tags", "k"]),
        ({"tags": {f"k{i}": "v" for i in range(21)}}, ["body", "tags"]),
        ({"name": "a\nb"}, ["body", "name"]),
        ({"name": "x" * 201}, ["body", "name"]),
        ({"notes": "x" * 5001}, ["body", "notes"]),
        ({"notify_url": "ftp://example.com/"}, ["body", "notify_url"]),
        ({"notify_url": "http://user:secret@example.com/"}, ["body", "notify_url"]),
    ],
)
def test_bad_labels_at_start_are_422_naming_the_field(
    module_client: TestClient, body: dict[str, Any], where: list[str]
) -> None:
    response = module_client.post("/training/start", json={**TINY_PPO, **body})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == where


def test_bad_filters_and_patches_are_422_and_unknown_runs_404(module_client: TestClient) -> None:
    response = module_client.get("/experiments", params={"tag": "bad key:x"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "tag", 0]
    unknown = "00000000-0000-4000-8000-000000000000"
    assert module_client.patch(f"/experiments/{unknown}", json={"name": "x"}).status_code == 404
    assert module_client.delete(f"/experiments/{unknown}").status_code == 404
    response = module_client.patch(f"/experiments/{unknown}", json={"colour": "red"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "colour"]


@pytest.mark.training
def test_labels_reach_mlflow_follow_patches_and_delete_removes_everything(client: TestClient) -> None:
    labels = {"name": "PPO baseline", "tags": {"team": "maze", "goal": "baseline"}, "notes": "first try"}
    status = run_to_end(client, {**TINY_PPO, **labels})
    run_id, mlflow_run_id = status["experiment_id"], status["mlflow_run_id"]
    state = app_state(client)
    tracking_uri = state.settings.mlflow_tracking_uri

    listed = client.get("/experiments", params={"q": "baseline", "tag": ["team:maze", "goal:baseline"]})
    assert [item["experiment_id"] for item in listed.json()["items"]] == [run_id]
    assert listed.json()["items"][0] | labels == listed.json()["items"][0]
    assert client.get("/experiments", params={"tag": "team:other"}).json()["total"] == 0

    mlflow_run = ended_mlflow_run(tracking_uri, mlflow_run_id)
    assert mlflow_run.info.run_name == "PPO baseline"
    assert mlflow_run.data.tags["team"] == "maze" and mlflow_run.data.tags["goal"] == "baseline"
    assert mlflow_run.data.tags["mlflow.note.content"] == "first try"
    assert mlflow_run.data.tags["experiment_id"] == run_id

    patched = client.patch(
        f"/experiments/{run_id}", json={"name": "renamed", "tags": {"goal": None, "stage": "done"}}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "renamed"
    assert patched.json()["tags"] == {"team": "maze", "stage": "done"}
    assert patched.json()["notes"] == "first try"  # left out: unchanged
    assert state.tracker.flush(30)
    mlflow_run = MlflowClient(tracking_uri).get_run(mlflow_run_id)
    assert mlflow_run.info.run_name == "renamed"
    assert mlflow_run.data.tags["stage"] == "done" and "goal" not in mlflow_run.data.tags

    run_dir = state.settings.run_dir(run_id)
    assert (run_dir / "model.zip").is_file()
    assert client.delete(f"/experiments/{run_id}").status_code == 204
    assert not run_dir.exists()
    assert client.get(f"/experiments/{run_id}").status_code == 404
    assert client.get(f"/training/status/{run_id}").status_code == 404
    assert MlflowClient(tracking_uri).get_run(mlflow_run_id).info.lifecycle_stage == "deleted"
    assert client.delete(f"/experiments/{run_id}").status_code == 404  # already gone


@pytest.mark.training
def test_a_running_run_cannot_be_deleted(client: TestClient) -> None:
    run_id = client.post("/training/start", json=LONG_PPO).json()["experiment_id"]
    wait_for_status(client.get, run_id, lambda s: s["status"] == "running")
    response = client.delete(f"/experiments/{run_id}")
    assert response.status_code == 409 and "stop it" in response.json()["detail"]
    assert client.post(f"/training/stop/{run_id}").json()["status"] == "stopped"
    assert client.delete(f"/experiments/{run_id}").status_code == 204
