"""What users see of a run record: progress, ETA, the ONNX block and the WebSocket message."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from core.settings import Settings
from records.tables import RunStatus, TrainingRun, utcnow
from records.views import progress_message, training_status
from tests.conftest import settings_for_tests


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for_tests(tmp_path / "data")


def training(run: TrainingRun, timesteps: int, fps: float | None) -> TrainingRun:
    """The record as a training thread leaves it mid-run."""
    run.status = RunStatus.RUNNING.value
    run.started_at = utcnow() - timedelta(seconds=30)
    run.timesteps = timesteps
    run.episode = timesteps // run.timesteps_per_episode
    run.fps = fps
    return run


def test_a_running_run_shows_its_progress_and_the_time_left_at_its_current_speed(
    run_record: TrainingRun, settings: Settings
) -> None:
    assert run_record.total_timesteps == 640
    status = training_status(training(run_record, timesteps=160, fps=40.0), settings)

    assert status.progress == 0.25
    assert status.episode == 2
    assert status.eta_s == (640 - 160) / 40.0
    assert status.elapsed_s is not None and 29.0 <= status.elapsed_s < 60.0
    assert status.model_available is False


def test_no_eta_without_a_speed_or_once_the_run_is_over(run_record: TrainingRun, settings: Settings) -> None:
    assert training_status(training(run_record, timesteps=0, fps=None), settings).eta_s is None

    run_record.fps = 40.0
    run_record.status = RunStatus.STOPPED.value
    run_record.started_at = utcnow() - timedelta(minutes=5)
    run_record.finished_at = run_record.started_at + timedelta(seconds=12)
    status = training_status(run_record, settings)

    assert status.eta_s is None
    assert status.elapsed_s == 12.0, "a finished run's clock stopped when it finished"


def test_progress_and_episode_stop_at_the_budget_when_the_last_rollout_overshoots_it(
    run_record: TrainingRun, settings: Settings
) -> None:
    # SB3 finishes whole rollouts: a run can step past its budget.
    status = training_status(training(run_record, timesteps=700, fps=40.0), settings)

    assert status.progress == 1.0
    assert status.episode == run_record.total_episodes
    assert status.eta_s == 0.0


def test_a_queued_run_has_no_progress_elapsed_time_or_onnx_block(
    run_record: TrainingRun, settings: Settings
) -> None:
    status = training_status(run_record, settings)

    assert (status.status, status.progress, status.elapsed_s, status.eta_s) == ("queued", 0.0, None, None)
    assert status.onnx is None


def test_only_an_exported_model_gets_a_download_url(run_record: TrainingRun, settings: Settings) -> None:
    run_record.onnx_status = "failed"
    run_record.onnx_error = "parity check failed"
    failed = training_status(run_record, settings).onnx

    run_record.onnx_status = "exported"
    exported = training_status(run_record, settings).onnx

    assert failed is not None and failed.download_url is None and failed.error == "parity check failed"
    assert exported is not None and exported.download_url == f"/experiments/{run_record.id}/model.onnx"


def test_the_websocket_message_is_final_only_for_a_final_status(
    run_record: TrainingRun, settings: Settings
) -> None:
    running = progress_message(training(run_record, timesteps=160, fps=40.0), settings)
    run_record.status = RunStatus.COMPLETED.value
    final = progress_message(run_record, settings)

    assert (running["type"], final["type"]) == ("progress", "final")
    assert running["experiment_id"] == run_record.id
    assert running["eta_s"] == 12.0
    assert {"timestamp", "timesteps", "total_timesteps", "reward", "tracking_status"} <= running.keys()
