"""A run's saved files: found on this machine, or fetched once from MLflow and cached by finish time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from core.settings import Settings
from mlflow_client import Tracker
from records.files import model_available, model_file, saved_file
from records.tables import TrainingRun, utcnow
from tests.conftest import copy_mlflow_store, settings_for_tests

MODEL_BYTES = b"PK\x03\x04 not really a model"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for_tests(tmp_path / "data")


@pytest.fixture
def tracker(tmp_path: Path, mlflow_store_template: Path) -> Iterator[Tracker]:
    copy_mlflow_store(mlflow_store_template, tmp_path / "mlflow")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", "model-files", tmp_path / "artifacts")
    yield tracker
    tracker.close()


def save_locally(settings: Settings, run: TrainingRun, filename: str) -> Path:
    path = settings.run_dir(run.id) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(MODEL_BYTES)
    return path


def uploaded_by_a_worker(tracker: Tracker, run: TrainingRun, tmp_path: Path) -> TrainingRun:
    """The record of a run another machine trained: its model is only in MLflow."""
    worker_file = tmp_path / "worker" / "model.zip"
    worker_file.parent.mkdir()
    worker_file.write_bytes(MODEL_BYTES)
    tracked = tracker.start_run(run.id, run.id, {"experiment_id": run.id})
    tracker.log_artifact(tracked, worker_file, "sb3_model")
    assert tracker.flush(120)
    run.mlflow_run_id = tracked.mlflow_run_id
    run.model_path = str(worker_file)
    run.finished_at = utcnow()
    return run


def test_a_file_saved_here_is_found_by_name(run_record: TrainingRun, settings: Settings) -> None:
    assert saved_file(settings, run_record) is None
    assert model_available(settings, run_record) is False

    path = save_locally(settings, run_record, "model.zip")

    assert saved_file(settings, run_record) == path
    assert saved_file(settings, run_record, "model.onnx") is None
    assert model_available(settings, run_record) is True


def test_a_model_saved_by_a_worker_is_available_only_once_mlflow_knows_the_run(
    run_record: TrainingRun, settings: Settings
) -> None:
    run_record.model_path = "/worker/data/runs/model.zip"
    assert model_available(settings, run_record) is False

    run_record.mlflow_run_id = "0123456789abcdef"
    assert model_available(settings, run_record) is True


def test_a_local_file_wins_and_without_a_tracker_nothing_is_fetched(
    run_record: TrainingRun, settings: Settings
) -> None:
    run_record.mlflow_run_id = "0123456789abcdef"
    run_record.finished_at = utcnow()
    assert model_file(settings, None, run_record, "model.zip") is None

    local = save_locally(settings, run_record, "model.zip")

    assert model_file(settings, None, run_record, "model.zip") == local


def test_a_workers_model_is_fetched_once_and_again_after_the_run_finishes_anew(
    run_record: TrainingRun, settings: Settings, tracker: Tracker, tmp_path: Path
) -> None:
    run = uploaded_by_a_worker(tracker, run_record, tmp_path)

    fetched = model_file(settings, tracker.runs, run, "model.zip")

    assert fetched is not None and fetched.read_bytes() == MODEL_BYTES
    assert fetched.is_relative_to(settings.data_dir / "artifact-cache" / run.id)
    assert model_file(settings, tracker.runs, run, "model.onnx") is None, "the worker uploaded no ONNX file"

    fetched.write_bytes(b"cached copy")  # a second request must not download again
    assert model_file(settings, tracker.runs, run, "model.zip") == fetched
    assert fetched.read_bytes() == b"cached copy"

    assert run.finished_at is not None
    run.finished_at += timedelta(minutes=5)  # resumed, and finished again: a new model
    refetched = model_file(settings, tracker.runs, run, "model.zip")
    assert refetched is not None and refetched != fetched
    assert refetched.read_bytes() == MODEL_BYTES
