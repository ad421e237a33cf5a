"""The run records' one entry point: reads, and every write of a run's progress and state.

`RunStore` adds its reads and state writes to admission (`records/admission.py`) and liveness
(`records/liveness.py`), all on the transactions of `records/transactions.py`. The database is what all
uvicorn workers share, so every cross-worker fact (state, progress, stop requests, who trains what,
and whether that worker is alive) is a column, never process memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, delete, func, select, true, update

from core.errors import RunNotFound
from records.admission import RunAdmission
from records.liveness import RunLiveness
from records.tables import RunStatus, TrainingRun, utcnow


@dataclasses.dataclass(frozen=True)
class EvaluationState:
    """Where a run's periodic held-out evaluation stands; written after every evaluation, so that a
    resumed run continues its schedule, its streaks and its best model.

    :param eval_success_rate: latest evaluation's success rate.
    :param eval_path_efficiency: latest evaluation's path efficiency.
    :param eval_timesteps: the run's timestep at the latest evaluation.
    :param evals_at_target: consecutive evaluations, up to the latest, at or above the target.
    :param evals_without_improvement: consecutive evaluations, up to the latest, that did not beat the best.
    :param best_eval_success_rate: the best evaluation's success rate (path efficiency breaks ties).
    :param best_eval_path_efficiency: the best evaluation's path efficiency.
    :param best_eval_timesteps: the run's timestep at the best evaluation.
    """

    eval_success_rate: float
    eval_path_efficiency: float
    eval_timesteps: int
    evals_at_target: int
    evals_without_improvement: int
    best_eval_success_rate: float
    best_eval_path_efficiency: float
    best_eval_timesteps: int


@dataclasses.dataclass(frozen=True)
class ProgressSnapshot:
    """Training progress as the callbacks measure it; written as one row update."""

    episode: int
    timesteps: int
    maze_episodes: int
    maze_successes: int
    reward: float | None
    success_rate: float | None
    loss: float | None
    fps: float | None


class RunStore(RunAdmission, RunLiveness):
    """Database operations on `training_runs`: admission, liveness, and the reads and writes below.

    :param session_factory: sessions bound to the service's engine.

    `on_write` listeners are called with the ids of the runs a write may have changed, once it
    committed, on the writing thread (the status cache drops its copies of them).
    """

    def get_many(self, run_ids: Sequence[str]) -> Sequence[TrainingRun]:
        """The runs among `run_ids` that exist, read in one query (one consistent snapshot)."""
        if not run_ids:
            return []
        with self._session_factory() as session:
            return session.scalars(select(TrainingRun).where(TrainingRun.id.in_(run_ids))).all()

    def list_runs(
        self,
        *,
        status: str | None = None,
        algorithm: str | None = None,
        limit: int = 50,
        offset: int = 0,
        where: Sequence[ColumnElement[bool]] = (),
    ) -> tuple[Sequence[TrainingRun], int]:
        """Newest first, with the total count matching the filters (`where`: more of them, e.g. labels)."""
        query = select(TrainingRun).where(*where)
        if status:
            query = query.where(TrainingRun.status == status)
        if algorithm:
            query = query.where(TrainingRun.algorithm == algorithm)
        with self._session_factory() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(TrainingRun.created_at.desc(), TrainingRun.id).limit(limit).offset(offset)
            ).all()
        return rows, total

    def count_by_status(self) -> dict[str, int]:
        """How many runs are in each state (states with none are absent), in one query."""
        with self._session_factory() as session:
            rows = session.execute(select(TrainingRun.status, func.count()).group_by(TrainingRun.status))
            return {status: count for status, count in rows}

    def record_setup(self, run_id: str, device: str, effective_hyperparameters: dict[str, Any]) -> None:
        self._update(run_id, device=device, effective_hyperparameters=effective_hyperparameters)

    def record_progress(self, run_id: str, snapshot: ProgressSnapshot) -> None:
        with self._writing([run_id]) as (session, _):
            session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id)
                .values(
                    progress_version=TrainingRun.progress_version + 1,
                    progress_at=utcnow(),
                    **dataclasses.asdict(snapshot),
                )
            )

    def record_evaluation(self, run_id: str, state: EvaluationState) -> None:
        self._update(run_id, **dataclasses.asdict(state), progress_version=TrainingRun.progress_version + 1)

    def record_mlflow_run(self, run_id: str, mlflow_run_id: str) -> None:
        self._update(run_id, mlflow_run_id=mlflow_run_id, tracking_status="ok", tracking_error=None)

    def record_tracking_status(self, run_id: str, status: str, error: str | None) -> None:
        self._update(run_id, tracking_status=status, tracking_error=error)

    def record_registration(self, run_id: str, status: str, version: int | None, error: str | None) -> None:
        """Where registering the run's model in the MLflow registry got: "registered" or "failed"."""
        values: dict[str, Any] = {"registry_status": status, "registry_error": error}
        if version is not None:
            values["registered_model_version"] = version
        self._update(run_id, **values)

    def record_fixed_maze_seed(self, run_id: str, maze_seed: int) -> None:
        self._update(run_id, fixed_maze_seed=maze_seed)

    def record_onnx(self, run_id: str, **values: Any) -> None:
        """ONNX export state: `onnx_status` plus size, opset, timing, parity or the error."""
        unknown = set(values) - {c.name for c in TrainingRun.__table__.columns if c.name.startswith("onnx_")}
        if unknown:
            raise ValueError(f"not ONNX fields: {sorted(unknown)}")
        self._update(run_id, **values)

    def claim_export(self, run_id: str, owner: str, stale_before: datetime, owner_gone: bool) -> bool:
        """Take a finished run's ONNX export for `owner`, in one statement (one worker wins): an export
        that failed or never ran, or one left `pending` by a worker that is gone (`owner_gone`) or whose
        last heartbeat is older than `stale_before`. False when the run is not such a run."""
        pending_stale: ColumnElement[bool] = true()
        if not owner_gone:
            pending_stale = TrainingRun.heartbeat_at.is_(None) | (TrainingRun.heartbeat_at < stale_before)
        takeable = (
            TrainingRun.onnx_status.is_(None)
            | (TrainingRun.onnx_status == "failed")
            | ((TrainingRun.onnx_status == "pending") & pending_stale)
        )
        finals = [status.value for status in RunStatus if status.is_final]
        with self._writing([run_id]) as (session, _):
            result = session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id, TrainingRun.status.in_(finals))
                .where(TrainingRun.model_path.is_not(None), takeable)
                .values(onnx_status="pending", onnx_error=None, owner=owner, heartbeat_at=utcnow())
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def pending_exports(self) -> list[TrainingRun]:
        """Finished runs whose ONNX export is `pending`: being exported, or left so by a dead worker."""
        finals = [status.value for status in RunStatus if status.is_final]
        with self._session_factory() as session:
            query = select(TrainingRun).where(
                TrainingRun.status.in_(finals), TrainingRun.onnx_status == "pending"
            )
            return list(session.scalars(query))

    def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        error: str | None = None,
        model_path: str | None = None,
        eval_success_rate: float | None = None,
        eval_path_efficiency: float | None = None,
        progress: ProgressSnapshot | None = None,
        onnx_pending: bool = False,
        stop_reason: str | None = None,
    ) -> None:
        """Move a running run to a final state, once: a run already final is left as it is.

        :param progress: the last progress snapshot, written with the final state: when the database
            was down as training published it, the record would otherwise keep stale progress.
        :param stop_reason: why it ended (a `StopReason`).
        :param onnx_pending: an ONNX export follows. Written with the final state so that no reader
            sees a finished run without an export that is in fact about to start.
        """
        finished_at = utcnow()
        values: dict[str, Any] = {
            "status": status.value,
            "finished_at": finished_at,
            "error": error,
            "progress_version": TrainingRun.progress_version + 1,
            "stop_reason": stop_reason,
        }
        if progress is not None:
            values.update(dataclasses.asdict(progress), progress_at=finished_at)
        if model_path is not None:
            values["model_path"] = model_path
        if eval_success_rate is not None:
            values["eval_success_rate"] = eval_success_rate
            values["success_rate"] = eval_success_rate
        if eval_path_efficiency is not None:
            values["eval_path_efficiency"] = eval_path_efficiency
        if onnx_pending:
            values.update(onnx_status="pending", onnx_error=None)
        with self._writing([run_id]) as (session, _):
            session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id)
                .where(TrainingRun.status.in_([RunStatus.RUNNING.value, RunStatus.QUEUED.value]))
                .values(**values)
            )

    def request_stop(self, run_id: str) -> TrainingRun:
        """Stop a queued run at once; ask a running one to stop (its worker sees the flag)."""
        with self._writing([run_id]) as (session, _):
            session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id)
                .where(TrainingRun.status == RunStatus.QUEUED.value)
                .values(status=RunStatus.STOPPED.value, finished_at=utcnow(), stop_requested=True)
            )
            session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id)
                .where(TrainingRun.status == RunStatus.RUNNING.value)
                .values(stop_requested=True)
            )
        return self.get(run_id)

    def requeue_for_resume(self, run_id: str) -> bool:
        """Put an interrupted, stopped or failed run back in the queue; False when it is in another state."""
        with self._writing([run_id]) as (session, _):
            result = session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id)
                .where(
                    TrainingRun.status.in_(
                        [RunStatus.INTERRUPTED.value, RunStatus.STOPPED.value, RunStatus.FAILED.value]
                    )
                )
                .values(
                    status=RunStatus.QUEUED.value,
                    finished_at=None,
                    error=None,
                    stop_requested=False,
                    owner=None,
                    onnx_status=None,
                    onnx_error=None,
                    stop_reason=None,
                    # A resumed run ends again: its notify_url hears of that end too.
                    notify_state=case((TrainingRun.notify_url.is_not(None), "pending"), else_=None),
                    # ...and its new model is registered again (a new version).
                    registry_status=case((TrainingRun.register_as.is_not(None), "pending"), else_=None),
                    registry_error=None,
                    progress_version=TrainingRun.progress_version + 1,
                )
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def update_labels(self, run_id: str, change: Callable[[TrainingRun], dict[str, Any]]) -> TrainingRun:
        """Write the labels (`name`, `tags`, `notes`) that `change` computes from the run as it is, in one
        transaction with that read (locked on PostgreSQL), so that two changes at once both count."""
        with self._writing([run_id]) as (session, _):
            run = session.get(TrainingRun, run_id, with_for_update=True)
            if run is None:
                raise RunNotFound(run_id)
            values = change(run)
            unknown = set(values) - {"name", "tags", "notes"}
            if unknown:
                raise ValueError(f"not labels: {sorted(unknown)}")
            if values:  # an empty patch changes nothing (an UPDATE without SET is not SQL)
                session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(**values))
        return self.get(run_id)

    def delete_final(self, run_id: str) -> bool:
        """Delete a run's record if it is in a final state, in one statement (a run resumed meanwhile is
        kept); False when no final run has this id."""
        finals = [status.value for status in RunStatus if status.is_final]
        with self._writing([run_id]) as (session, _):
            result = session.execute(
                delete(TrainingRun).where(TrainingRun.id == run_id).where(TrainingRun.status.in_(finals))
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def is_active(self, run_id: str) -> bool:
        """Queued or running."""
        with self._session_factory() as session:
            status = session.scalar(select(TrainingRun.status).where(TrainingRun.id == run_id))
        return status in (RunStatus.QUEUED.value, RunStatus.RUNNING.value)

    def stop_requested(self, run_id: str) -> bool:
        with self._session_factory() as session:
            return bool(session.scalar(select(TrainingRun.stop_requested).where(TrainingRun.id == run_id)))

    def latest_versions(self, run_ids: Sequence[str]) -> dict[str, int]:
        with self._session_factory() as session:
            rows = session.execute(
                select(TrainingRun.id, TrainingRun.progress_version).where(TrainingRun.id.in_(run_ids))
            ).all()
        return {run_id: version for run_id, version in rows}


def elapsed_seconds(run: TrainingRun, now: datetime | None = None) -> float | None:
    if run.started_at is None:
        return None
    end = run.finished_at or now or utcnow()
    return max(0.0, (end - run.started_at).total_seconds())
