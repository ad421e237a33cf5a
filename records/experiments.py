"""What users do with a recorded run: list, read with MLflow, fetch files, play and evaluate its policy.

Reading joins the record with its MLflow run; playing and evaluating run the exported ONNX policy.

Every method blocks (database, MLflow) and is called off the event loop, except `play` and `evaluate`:
they are awaited, and run on a few threads of their own (MAX_CONCURRENT_EVALUATIONS), so that long
evaluations can neither hold the server's shared request threads nor pile up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

import maze_env
from agents.evaluation import EvalResult, evaluate_with
from agents.onnx_policy import OnnxPolicy
from agents.rollouts import Rollout, play_maze
from api.schemas.labels import LabelsUpdate
from core.errors import (
    ArtifactStoreUnavailable,
    ModelFileCorrupt,
    ModelNotAvailable,
    PolicyNotExported,
    PolicyPlayersBusy,
    RunStillActive,
    TrackingUnavailable,
    describe,
)
from core.run_logs import read_run_log
from core.settings import Settings
from mlflow_client import TrackedRun, Tracker
from records.files import check_model_file, model_file, remove_run_files
from records.labels import LabelChange, label_filters, merge_labels
from records.mlflow_runs import MlflowRuns, RunDetails
from records.store import RunStore
from records.tables import RunStatus, TrainingRun

log = structlog.get_logger(__name__)

T = TypeVar("T")

# A rollout takes well under a second and an evaluation seconds to a few minutes: a retry after a few
# seconds finds a slot in most cases without hammering a busy service.
PLAYERS_RETRY_AFTER_S = 5


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
    :param tracker: MLflow logging, for label changes (None: MLflow is not told).
    """

    def __init__(
        self, settings: Settings, store: RunStore, mlflow_runs: MlflowRuns, tracker: Tracker | None = None
    ) -> None:
        self._settings = settings
        self._store = store
        self._mlflow_runs = mlflow_runs
        self._tracker = tracker
        slots = settings.max_concurrent_evaluations
        self._players = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="policy-player")
        # Taken without waiting, given back when the work ends (not when a client gives up on it): at
        # most `slots` policies play at once, and none waits in the pool's queue.
        self._free_players = threading.BoundedSemaphore(slots)

    def close(self) -> None:
        """Refuse new rollouts and evaluations; those under way finish on their threads."""
        self._players.shutdown(wait=False, cancel_futures=True)

    def list_runs(
        self,
        *,
        status: str | None,
        algorithm: str | None,
        limit: int,
        offset: int,
        name_query: str | None = None,
        tags: Sequence[str] = (),
        sweep_id: str | None = None,
    ) -> RunPage:
        """Newest first; the MLflow experiment id only if already known (no wait on MLflow).

        :param name_query: only runs whose name contains this (any case).
        :param tags: only runs with each tag, as `key:value` or a bare `key`.
        :param sweep_id: only the trials of this sweep.
        """
        where = label_filters(name_query, tags)
        if sweep_id:
            where.append(TrainingRun.sweep_id == sweep_id)
        runs, total = self._store.list_runs(
            status=status, algorithm=algorithm, limit=limit, offset=offset, where=where
        )
        return RunPage(runs, total, self._mlflow_runs.cached_experiment_id())

    def update_labels(self, run_id: str, update: LabelsUpdate) -> TrainingRun:
        """Change the run's name, tags or notes; its MLflow run follows (through the tracker's retries)."""
        changes: list[LabelChange] = []

        def change(run: TrainingRun) -> dict[str, Any]:
            changes[:] = [merge_labels(run, update)]
            return changes[0].values

        run = self._store.update_labels(run_id, change)
        log.info("run_labels_changed", experiment_id=run.id, fields=sorted(update.model_fields_set))
        if self._tracker is not None and run.mlflow_run_id and changes:
            tracked = TrackedRun(run.id, run.mlflow_run_id)
            if changes[0].mlflow_tags:
                self._tracker.set_tags(tracked, changes[0].mlflow_tags)
            if changes[0].mlflow_removed:
                self._tracker.delete_tags(tracked, changes[0].mlflow_removed)
        return run

    def logs(self, run_id: str, limit: int) -> tuple[TrainingRun, list[dict[str, Any]], bool]:
        """The run's last `limit` log records (oldest first) and whether older ones exist."""
        run = self._store.get(run_id)
        records, truncated = read_run_log(self._settings.run_dir(run.id), limit)
        return run, records, truncated

    def delete(self, run_id: str) -> None:
        """Delete a finished run: its MLflow run (soft delete), its record, and its files here.

        `RunNotFound` for an unknown (or already deleted) run; `RunStillActive` for a queued or running
        one; `TrackingUnavailable` (nothing deleted) when MLflow cannot be reached.
        """
        run = self._store.get(run_id)
        if not RunStatus(run.status).is_final:
            raise RunStillActive(f"run {run.id} is {run.status}; stop it before deleting it")
        mlflow_deleted = False
        if run.mlflow_run_id and self._settings.mlflow_enabled:
            try:
                mlflow_deleted = self._mlflow_runs.delete_run(run.mlflow_run_id)
            except Exception as error:
                log.warning("run_delete_mlflow_failed", experiment_id=run.id, error=describe(error))
                raise TrackingUnavailable(
                    f"MLflow could not be reached to delete run {run.id}'s MLflow run; nothing was deleted"
                ) from error
        if not self._store.delete_final(run.id):
            # Resumed (or deleted by another worker) since it was read: put MLflow back as it was.
            if mlflow_deleted and run.mlflow_run_id:
                self._mlflow_runs.restore_run(run.mlflow_run_id)
            current = self._store.get(run.id)  # RunNotFound when another delete won
            raise RunStillActive(f"run {current.id} is {current.status}; stop it before deleting it")
        remove_run_files(self._settings, run.id)
        log.info("run_deleted", experiment_id=run.id, mlflow_run_id=run.mlflow_run_id)

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
        # Checked before answering: once the 200 and its Content-Length are sent, a file that cannot be
        # read can only end in a truncated body.
        check_model_file(path, run.id)
        return path

    async def play(self, run_id: str, maze_seed: int | None) -> PlayedMaze:
        """One deterministic episode of the exported policy; by default on a fixed-mode run's own maze,
        else a random one."""
        return await self._on_player(self._play, run_id, maze_seed)

    async def evaluate(self, run_id: str, episodes: int) -> Evaluation:
        """The exported policy on `episodes` evaluation mazes (seeds disjoint from training's)."""
        return await self._on_player(self._evaluate, run_id, episodes)

    async def _on_player(self, work: Callable[..., T], *args: object) -> T:
        """`work` on a free player thread; `PolicyPlayersBusy` at once when every one is taken."""
        if not self._free_players.acquire(blocking=False):
            raise PolicyPlayersBusy(self._settings.max_concurrent_evaluations, PLAYERS_RETRY_AFTER_S)
        try:
            future: Future[T] = self._players.submit(work, *args)
        except BaseException:
            self._free_players.release()
            raise
        future.add_done_callback(lambda _: self._free_players.release())
        return await asyncio.wrap_future(future)

    def _play(self, run_id: str, maze_seed: int | None) -> PlayedMaze:
        run, policy = self._exported_policy(run_id)
        if maze_seed is None:
            maze_seed = run.fixed_maze_seed if run.fixed_maze_seed is not None else secrets.randbelow(2**31)
        return PlayedMaze(run, maze_seed, play_maze(policy.predict, run.maze_size, maze_seed))

    def _evaluate(self, run_id: str, episodes: int) -> Evaluation:
        run, policy = self._exported_policy(run_id)
        seeds = maze_env.eval_maze_seeds(episodes)
        return Evaluation(run, evaluate_with(policy.predict, run.maze_size, seeds))

    def _exported_policy(self, run_id: str) -> tuple[TrainingRun, OnnxPolicy]:
        run = self._store.get(run_id)
        path = self._fetch(run, "model.onnx") if run.onnx_status == "exported" else None
        if path is None:
            raise PolicyNotExported(f"run {run.id} has no exported ONNX model yet (status: {run.status})")
        check_model_file(path, run.id)
        try:
            return run, OnnxPolicy(path)
        except Exception as error:  # onnxruntime's errors have no common base that says "bad file"
            log.warning("onnx_model_corrupt", experiment_id=run.id, error=describe(error))
            raise ModelFileCorrupt(
                f"run {run.id}'s model.onnx is not a valid ONNX model (truncated or overwritten?); "
                "it needs a new export"
            ) from error

    def _fetch(self, run: TrainingRun, filename: str) -> Path | None:
        """The run's file, from this machine or (trained on a Ray worker) the MLflow artifact store."""
        try:
            return model_file(self._settings, self._mlflow_runs, run, filename)
        except Exception as error:
            log.warning("artifact_fetch_failed", experiment_id=run.id, file=filename, error=describe(error))
            raise ArtifactStoreUnavailable(
                f"the MLflow artifact store holding {filename} is unavailable: {type(error).__name__}"
            ) from error
