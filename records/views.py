"""Turns run records into what users see: status, experiment summaries and WebSocket messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from api.schemas import ExperimentSummary, OnnxInfo, RegisteredModelInfo, TrainingStatus
from core.settings import Settings
from records.files import model_available
from records.mlflow_runs import ui_url
from records.store import elapsed_seconds
from records.tables import RunStatus, StopReason, TrainingRun, run_policy

# A final run whose job did not record why it ended (finished elsewhere, or before stop reasons existed).
STOP_REASON_OF_STATUS = {
    RunStatus.COMPLETED.value: StopReason.BUDGET_EXHAUSTED.value,
    RunStatus.STOPPED.value: StopReason.STOPPED.value,
    RunStatus.INTERRUPTED.value: StopReason.INTERRUPTED.value,
    RunStatus.FAILED.value: StopReason.FAILED.value,
}


def training_status(run: TrainingRun, settings: Settings) -> TrainingStatus:
    """What a user sees of a run: its record plus derived progress, elapsed time and ETA."""
    elapsed = elapsed_seconds(run)
    running = run.status == RunStatus.RUNNING.value
    remaining = max(0, run.total_timesteps - run.timesteps)
    eta = remaining / run.fps if running and run.fps else None
    return TrainingStatus(
        experiment_id=run.id,
        status=run.status,
        algorithm=run.algorithm,
        maze_size=run.maze_size,
        maze_mode=run.maze_mode,
        seed=run.seed,
        policy=run_policy(run),
        n_envs=run.n_envs,
        device=run.device,
        episode=min(run.episode, run.total_episodes),
        total_episodes=run.total_episodes,
        timesteps=run.timesteps,
        total_timesteps=run.total_timesteps,
        progress=min(1.0, run.timesteps / run.total_timesteps) if run.total_timesteps else 0.0,
        maze_episodes=run.maze_episodes,
        reward=run.reward,
        success_rate=run.success_rate,
        eval_success_rate=run.eval_success_rate,
        eval_path_efficiency=run.eval_path_efficiency,
        eval_timesteps=run.eval_timesteps,
        best_eval_success_rate=run.best_eval_success_rate,
        best_eval_path_efficiency=run.best_eval_path_efficiency,
        best_eval_timesteps=run.best_eval_timesteps,
        target_success_rate=run.target_success_rate,
        stop_reason=stop_reason(run),
        loss=run.loss,
        fps=run.fps,
        elapsed_s=elapsed,
        eta_s=eta,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        updated_at=run.progress_at,
        stop_requested=run.stop_requested,
        error=run.error,
        model_available=model_available(settings, run),
        mlflow_run_id=run.mlflow_run_id,
        tracking_status=run.tracking_status,
        tracking_error=run.tracking_error,
        onnx=onnx_info(run),
        sweep_id=run.sweep_id,
        sweep_trial=run.sweep_trial,
        registered_model=registered_model(run),
    )


def registered_model(run: TrainingRun) -> RegisteredModelInfo | None:
    if run.register_as is None or run.registry_status is None:
        return None
    return RegisteredModelInfo(
        name=run.register_as,
        status=run.registry_status,
        version=run.registered_model_version,
        error=run.registry_error,
    )


def stop_reason(run: TrainingRun) -> str | None:
    """Why a final run ended; None while it is queued or running (a resumed run's old reason is void)."""
    if not RunStatus(run.status).is_final:
        return None
    return run.stop_reason or STOP_REASON_OF_STATUS[run.status]


def onnx_info(run: TrainingRun) -> OnnxInfo | None:
    if run.onnx_status is None:
        return None
    exported = run.onnx_status == "exported"
    return OnnxInfo(
        status=run.onnx_status,
        download_url=f"/experiments/{run.id}/model.onnx" if exported else None,
        size_bytes=run.onnx_size_bytes,
        opset=run.onnx_opset,
        export_seconds=run.onnx_export_seconds,
        parity_passed=run.onnx_parity_passed,
        error=run.onnx_error,
    )


LABELS = ("name", "tags", "notes")


def experiment_summary(
    run: TrainingRun, settings: Settings, mlflow_experiment_id: str | None
) -> ExperimentSummary:
    status = training_status(run, settings)
    return ExperimentSummary(
        **status.model_dump(include=set(ExperimentSummary.model_fields) - {"mlflow_url", *LABELS}),
        name=run.name,
        tags=run.tags or {},
        notes=run.notes,
        mlflow_url=ui_url(
            settings.mlflow_tracking_uri,
            settings.mlflow_ui_url or None,
            mlflow_experiment_id,
            run.mlflow_run_id,
        ),
    )


PROGRESS_FIELDS = (
    "experiment_id",
    "status",
    "episode",
    "total_episodes",
    "timesteps",
    "total_timesteps",
    "reward",
    "success_rate",
    "eval_success_rate",
    "eval_path_efficiency",
    "best_eval_success_rate",
    "best_eval_timesteps",
    "stop_reason",
    "loss",
    "fps",
    "elapsed_s",
    "eta_s",
    "error",
    "tracking_status",
)


def progress_message(run: TrainingRun, settings: Settings) -> dict[str, Any]:
    """One WebSocket message: `type` is "final" once the run reached a final state."""
    status = training_status(run, settings).model_dump(mode="json")
    message: dict[str, Any] = {"type": "final" if RunStatus(run.status).is_final else "progress"}
    message.update({field: status[field] for field in PROGRESS_FIELDS})
    message["timestamp"] = datetime.now(UTC).isoformat()
    return message
