"""`TrainingJob` on its own, without a service or executor: real tiny training, a real SQLite store, MLflow
off. What each way a job can end leaves in the record and on disk."""

from __future__ import annotations

from agents.onnx_policy import OnnxPolicy
from core.settings import Settings
from records.store import RunStore
from records.tables import RunStatus, TrainingRun
from tests.conftest import SMALL_RUN
from training.job import JobControl, TrainingJob


def claimed_run(store: RunStore) -> TrainingRun:
    store.create(SMALL_RUN)
    run = store.claim_next_queued("tests:1:job", max_running=10)
    assert run is not None
    return run


def test_a_job_trains_its_budget_then_records_saves_evaluates_and_exports(
    job_settings: Settings, job_store: RunStore
) -> None:
    run = claimed_run(job_store)

    status = TrainingJob(job_settings, job_store, None, run, JobControl()).execute()

    record = job_store.get(run.id)
    assert status is RunStatus.COMPLETED
    assert record.status == "completed" and record.error is None
    assert record.timesteps >= record.total_timesteps
    assert record.device == "cpu"
    assert record.effective_hyperparameters is not None
    assert record.effective_hyperparameters["n_envs"] == SMALL_RUN.n_envs
    assert record.eval_success_rate is not None and 0.0 <= record.eval_success_rate <= 1.0
    run_dir = job_settings.run_dir(run.id)
    assert record.model_path == str(run_dir / "model.zip") and (run_dir / "model.zip").is_file()
    assert record.onnx_status == "exported" and record.onnx_parity_passed is True
    metadata = OnnxPolicy(run_dir / "model.onnx").metadata
    assert metadata["experiment_id"] == run.id and metadata["maze_size"] == str(SMALL_RUN.maze_size)


def test_a_stopped_job_saves_and_exports_what_it_learned_without_evaluating(
    job_settings: Settings, job_store: RunStore
) -> None:
    run = claimed_run(job_store)
    control = JobControl()
    control.stop.set()  # asked to stop before its first step

    status = TrainingJob(job_settings, job_store, None, run, control).execute()

    record = job_store.get(run.id)
    assert status is RunStatus.STOPPED and record.status == "stopped"
    assert record.timesteps < record.total_timesteps
    assert record.eval_success_rate is None
    assert (job_settings.run_dir(run.id) / "model.zip").is_file()
    assert record.onnx_status == "exported"


def test_a_job_whose_host_shuts_down_ends_interrupted_with_its_model_and_no_export(
    job_settings: Settings, job_store: RunStore
) -> None:
    run = claimed_run(job_store)
    control = JobControl(shutting_down=True)
    control.stop.set()

    status = TrainingJob(job_settings, job_store, None, run, control).execute()

    record = job_store.get(run.id)
    assert status is RunStatus.INTERRUPTED and record.status == "interrupted"
    assert record.error == "the service shut down during training"
    assert (job_settings.run_dir(run.id) / "model.zip").is_file(), "resume needs the saved model"
    assert record.onnx_status is None


def test_a_job_that_cannot_save_its_model_ends_failed_with_the_reason(
    job_settings: Settings, job_store: RunStore
) -> None:
    run = claimed_run(job_store)
    # A real fault: a file where the run's directory should be, so the model cannot be saved there.
    job_settings.models_dir.mkdir(parents=True, exist_ok=True)
    job_settings.run_dir(run.id).write_text("not a directory")

    status = TrainingJob(job_settings, job_store, None, run, JobControl()).execute()

    record = job_store.get(run.id)
    assert status is RunStatus.FAILED and record.status == "failed"
    assert record.error is not None and record.error.startswith(("FileExistsError", "NotADirectoryError"))
    assert record.finished_at is not None
