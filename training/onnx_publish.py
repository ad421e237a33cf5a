"""Export a run's policy to ONNX and verify it: for the job that trained it, and again later for a
finished run whose export failed or was left `pending` by a worker that died (`export_saved_model`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import structlog
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

import onnx_export
from agents.building import load_model, make_vec_env
from core.settings import Settings
from mlflow_client import TrackedRun, Tracker
from records.metric_names import mlflow_metrics
from records.mlflow_models import ModelHandOn
from records.store import EvaluationState, RunStore
from records.tables import TrainingRun
from training.run_metadata import onnx_metadata

ONNX_FILE = "model.onnx"


def verification_observations(maze_size: int) -> int:
    """How many observations an export is verified on: 1,000 up to maze 14, then fewer (about 200,000
    cells in all, never under 200: 500 at maze 20, 222 at maze 30).

    onnxruntime's share of the verification grows with the cells and the sweeps of each observation; with
    1,000 at maze 30 export + verification took 2.1-3.0 s, with 200 0.5-0.7 s (issue 19: at most 2 s).
    """
    return max(200, min(1000, 200_000 // (maze_size * maze_size)))


def export_run_policy(
    model: BaseAlgorithm, env: VecEnv, run: TrainingRun, out_path: Path
) -> onnx_export.ExportReport:
    """Export `model` to `out_path` and verify it against torch on observations of the run's mazes.

    :raises onnx_export.OnnxExportError: the export or its verification failed.
    """
    count = verification_observations(run.maze_size)
    observations = onnx_export.collect_observations(model, env, count, seed=run.seed)
    return onnx_export.export_policy(cast(PPO | DQN, model), out_path, onnx_metadata(run, env), observations)


def exported_fields(report: onnx_export.ExportReport) -> dict[str, Any]:
    """The record's ONNX columns for a successful export."""
    return {
        "onnx_status": "exported",
        "onnx_error": None,
        "onnx_size_bytes": report.size_bytes,
        "onnx_opset": report.opset,
        "onnx_export_seconds": report.export_seconds,
        "onnx_parity_passed": report.parity.passed,
    }


def export_error(error: Exception) -> str:
    """What a failed export records: the exporter's own message, or the error described."""
    return (
        str(error) if isinstance(error, onnx_export.OnnxExportError) else f"{type(error).__name__}: {error}"
    )


def model_hand_on(run: TrainingRun, best: EvaluationState | None = None) -> ModelHandOn:
    """What goes with the run's logged model: the kept (best) model's held-out evaluation (`best`, else as
    the record has it), when there was one, and the registered name asked for at start."""
    source = best or run
    held_out = {
        "best_eval_success_rate": source.best_eval_success_rate,
        "best_eval_path_efficiency": source.best_eval_path_efficiency,
    }
    metrics = {key: value for key, value in held_out.items() if value is not None}
    return ModelHandOn(mlflow_metrics(metrics), source.best_eval_timesteps or 0, run.register_as)


def export_saved_model(
    settings: Settings, store: RunStore, tracker: Tracker | None, run: TrainingRun
) -> TrainingRun:
    """Export a finished run's saved `model.zip` again (the caller has claimed the export: `RunStore.
    claim_export`), record the outcome and, when the run has an MLflow run, log the ONNX model to it.

    :returns: the run's record after the export (exported, or failed with the error).
    """
    bound = structlog.get_logger(__name__).bind(experiment_id=run.id)
    out_path = settings.run_dir(run.id) / ONNX_FILE
    env = make_vec_env(run.maze_size, run.maze_mode, run.seed, run.n_envs)
    try:
        model = load_model(run.algorithm, Path(str(run.model_path)), None, "cpu")
        report = export_run_policy(model, env, run, out_path)
    except Exception as error:
        message = export_error(error)
        bound.warning("onnx_export_failed", error=message, export="again")
        store.record_onnx(run.id, onnx_status="failed", onnx_error=message)
        return store.get(run.id)
    finally:
        env.close()
    if tracker is not None and run.mlflow_run_id:
        tracker.log_onnx_model(TrackedRun(run.id, run.mlflow_run_id), out_path, model_hand_on(run))
    store.record_onnx(run.id, **exported_fields(report))
    bound.info("onnx_exported", seconds=round(report.export_seconds, 3), export="again")
    return store.get(run.id)
