"""What users do with a recorded run: list it, read it joined with MLflow, fetch its files, and play
and evaluate its exported ONNX policy.

Every method blocks (database, MLflow, onnxruntime): call them off the event loop.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence
from pathlib import Path

import structlog

import maze_env
from agents.evaluation import EvalResult, evaluate_with
from agents.onnx_policy import OnnxPolicy
from agents.rollouts import Rollout, play_maze
from core.errors import ArtifactStoreUnavailable, ModelNotAvailable, PolicyNotExported, describe
from core.settings import Settings
from records.files import model_file
from records.mlflow_runs import MlflowRuns, RunDetails
from records.store import RunStore
from records.tables import TrainingRun

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class RunPage:
    runs: Sequence[TrainingRun]
    total: int  # runs matching the filters, on every page
    mlflow_experiment_id: str | None


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """A run with what MLflow holds of it; `mlflow_error` says why `mlflow` is None."""

    run: TrainingRun
    mlflow: RunDetails | None
    mlflow_error: str | None


@dataclasses.dataclass(frozen=True)
class PlayedMaze:
    run: TrainingRun
    maze_seed: int
    rollout: Rollout


@dataclasses.dataclass(frozen=True)
class Evaluation:
    run: TrainingRun
    result: EvalResult


class Experiments:
    """Recorded runs, as users browse and use them.

    :param settings: where this machine keeps run files.
    :param store: run records.
    :param mlflow_runs: runs in MLflow: their details, and the files of runs trained elsewhere.
    """

    def __init__(self, settings: Settings, store: RunStore, mlflow_runs: MlflowRuns) -> None:
        self._settings = settings
        self._store = store
        self._mlflow_runs = mlflow_runs

    def list_runs(self, *, status: str | None, algorithm: str | None, limit: int, offset: int) -> RunPage:
        """Newest first; the MLflow experiment id only if already known (no wait on MLflow)."""
        runs, total = self._store.list_runs(status=status, algorithm=algorithm, limit=limit, offset=offset)
        return RunPage(runs, total, self._mlflow_runs.cached_experiment_id())

    def get(self, run_id: str) -> RunRecord:
        """The run with its MLflow data; when MLflow cannot be reached, the run's own record still."""
        run = self._store.get(run_id)
        if not run.mlflow_run_id:
            return RunRecord(run, None, "no MLflow run recorded yet")
        try:
            return RunRecord(run, self._mlflow_runs.run_details(run.mlflow_run_id), None)
        except Exception as error:
            return RunRecord(run, None, f"MLflow unavailable: {describe(error)}")

    def model_file(self, run_id: str, filename: str) -> Path:
        """The run's `model.zip`, `last_model.zip` or `model.onnx`, here or from the artifact store."""
        run = self._store.get(run_id)
        if filename == "model.onnx" and run.onnx_status != "exported":
            raise ModelNotAvailable(
                f"run {run.id} has no exported ONNX model (export: {run.onnx_status or 'not yet'})"
            )
        path = self._fetch(run, filename)
        if path is None:
            raise ModelNotAvailable(f"run {run.id} has no saved {filename} yet (status: {run.status})")
        return path

    def play(self, run_id: str, maze_seed: int | None) -> PlayedMaze:
        """One deterministic episode of the exported policy; by default on a fixed-mode run's own maze,
        else a random one."""
        run, policy = self._exported_policy(run_id)
        if maze_seed is None:
            maze_seed = run.fixed_maze_seed if run.fixed_maze_seed is not None else secrets.randbelow(2**31)
        return PlayedMaze(run, maze_seed, play_maze(policy.predict, run.maze_size, maze_seed))

    def evaluate(self, run_id: str, episodes: int) -> Evaluation:
        """The exported policy on `episodes` evaluation mazes (seeds disjoint from training's)."""
        run, policy = self._exported_policy(run_id)
        seeds = maze_env.eval_maze_seeds(episodes)
        return Evaluation(run, evaluate_with(policy.predict, run.maze_size, seeds))

    def _exported_policy(self, run_id: str) -> tuple[TrainingRun, OnnxPolicy]:
        run = self._store.get(run_id)
        path = self._fetch(run, "model.onnx") if run.onnx_status == "exported" else None
        if path is None:
            raise PolicyNotExported(f"run {run.id} has no exported ONNX model yet (status: {run.status})")
        return run, OnnxPolicy(path)

    def _fetch(self, run: TrainingRun, filename: str) -> Path | None:
        """The run's file, from this machine or (trained on a Ray worker) the MLflow artifact store."""
        try:
            return model_file(self._settings, self._mlflow_runs, run, filename)
        except Exception as error:
            log.warning("artifact_fetch_failed", experiment_id=run.id, file=filename, error=describe(error))
            raise ArtifactStoreUnavailable(
                f"the MLflow artifact store holding {filename} is unavailable: {type(error).__name__}"
            ) from error
