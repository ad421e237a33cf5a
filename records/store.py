"""Reads and writes of run records: every state change goes through here, in short transactions.

The database is what all uvicorn workers share, so every cross-worker fact (state, progress, stop
requests, who trains what, and whether that worker is alive) is a column, never process memory.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import false, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from core.errors import RunNotFound
from records.tables import RunStatus, TrainingRun, utcnow


@dataclasses.dataclass(frozen=True)
class NewRun:
    """A validated request, resolved to concrete values (seed and n_envs chosen)."""

    algorithm: str
    total_episodes: int
    timesteps_per_episode: int
    maze_size: int
    maze_mode: str
    seed: int
    n_envs: int
    device_requested: str
    hyperparameters: dict[str, Any]
    target_success_rate: float | None = None
    eval_every_episodes: int | None = None
    eval_episodes: int | None = None
    patience: int | None = None
    max_evals_without_improvement: int | None = None
    sweep_id: str | None = None
    sweep_trial: int | None = None


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
class Admission:
    """What `RunStore.admit` decided about a start.

    :param run: the new queued run, the run an earlier start with the same idempotency key created
        (`earlier`), or None: the queue is full.
    :param waiting: queued runs that will still wait for a slot once the free slots are taken.
    """

    run: TrainingRun | None
    earlier: bool
    waiting: int


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


def worker_identity() -> str:
    """`host:pid:nonce`: the nonce tells a restarted process apart from its predecessor with the same pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Every transaction that counts runs before it adds or starts one takes this PostgreSQL advisory lock.
ADMISSION_LOCK_KEY = 7410523
# /health waits this long for SQLite's write lock: a longer wait means writes are stuck.
WRITE_CHECK_TIMEOUT_S = 2.0

WriteListener = Callable[[Collection[str]], None]


class RunStore:
    """Database operations on `training_runs`.

    :param session_factory: sessions bound to the service's engine.

    `on_write` listeners are called with the ids of the runs a write may have changed, once it
    committed, on the writing thread (the status cache drops its copies of them).
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory
        self.on_write: list[WriteListener] = []

    @contextmanager
    def _writing(self, run_ids: Collection[str] = ()) -> Iterator[tuple[Session, set[str]]]:
        """A write transaction; `run_ids` and the ids added to the yielded set are announced once it
        committed (not at all when it failed: nothing changed)."""
        written = set(run_ids)
        with self._session_factory() as session, session.begin():
            yield session, written
        if written:
            for listener in self.on_write:
                listener(written)

    def ping(self) -> None:
        with self._session_factory() as session:
            session.execute(text("SELECT 1"))

    @contextmanager
    def _serialised_writing(self, run_ids: Collection[str] = ()) -> Iterator[tuple[Session, set[str]]]:
        """A write transaction that holds the write lock from its first statement, so that what it
        counts stays true until it commits, in every worker process: SQLite's BEGIN IMMEDIATE, or on
        PostgreSQL a transaction-scoped advisory lock that every such transaction takes."""
        with self._writing(run_ids) as (session, written):
            if session.get_bind().dialect.name == "postgresql":
                session.execute(text(f"SELECT pg_advisory_xact_lock({ADMISSION_LOCK_KEY})"))
            else:
                session.execute(text("BEGIN IMMEDIATE"))
            yield session, written

    def check_writable(self) -> None:
        """Take the database's write lock and let it go; raises when the database cannot be written.

        SQLite is checked on a connection of its own: a pooled connection opened before the file became
        unreadable still works, while every connection opened since fails.
        """
        engine = self._session_factory.kw["bind"]
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        if not database or database == ":memory:":
            with self._session_factory() as session, session.begin():
                # Matches no row, yet needs the table's write lock: refused by a read-only database.
                session.execute(update(TrainingRun).where(false()).values(stop_requested=True))
            return
        connection = sqlite3.connect(
            f"{Path(database).resolve().as_uri()}?mode=rw",
            uri=True,
            timeout=WRITE_CHECK_TIMEOUT_S,
            isolation_level=None,
        )
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    def create(self, new_run: NewRun) -> TrainingRun:
        """Record a new queued run, whatever the queue holds."""
        with self._writing() as (session, written):
            run = self._insert(session, written, new_run)
        return run

    def admit(
        self,
        new_run: NewRun,
        *,
        max_running: int,
        max_queued: int,
        idempotency_key: str | None = None,
        request_digest: str | None = None,
    ) -> Admission:
        """Record a new queued run if the queue has room, in one step with the count (see `Admission`).

        The new run waits for a slot when `max_running` runs are running or queued ahead of it; it is
        refused when `max_queued` runs would already be waiting. With `idempotency_key`, a run created
        by an earlier start with the same key is answered instead of a new one.
        """
        with self._serialised_writing() as (session, written):
            if idempotency_key is not None:
                earlier = session.scalar(
                    select(TrainingRun).where(TrainingRun.idempotency_key == idempotency_key)
                )
                if earlier is not None:
                    return Admission(earlier, earlier=True, waiting=0)
            counts: dict[str, int] = dict(
                session.execute(
                    select(TrainingRun.status, func.count())
                    .where(TrainingRun.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value]))
                    .group_by(TrainingRun.status)
                ).all()
            )
            running = counts.get(RunStatus.RUNNING.value, 0)
            queued = counts.get(RunStatus.QUEUED.value, 0)
            waiting = max(0, queued - max(0, max_running - running))
            if running + queued >= max_running and waiting >= max_queued:
                return Admission(None, earlier=False, waiting=waiting)
            run = self._insert(session, written, new_run, idempotency_key, request_digest)
        return Admission(run, earlier=False, waiting=waiting)

    @staticmethod
    def _insert(
        session: Session,
        written: set[str],
        new_run: NewRun,
        idempotency_key: str | None = None,
        request_digest: str | None = None,
    ) -> TrainingRun:
        run = TrainingRun(
            id=str(uuid.uuid4()),
            status=RunStatus.QUEUED.value,
            total_timesteps=new_run.total_episodes * new_run.timesteps_per_episode,
            stop_requested=False,
            progress_version=0,
            episode=0,
            timesteps=0,
            maze_episodes=0,
            maze_successes=0,
            created_at=utcnow(),
            idempotency_key=idempotency_key,
            request_digest=request_digest,
            **dataclasses.asdict(new_run),
        )
        session.add(run)
        written.add(run.id)
        return run

    def get(self, run_id: str) -> TrainingRun:
        with self._session_factory() as session:
            run = session.get(TrainingRun, run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

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
    ) -> tuple[Sequence[TrainingRun], int]:
        """Newest first, with the total count matching the filters."""
        query = select(TrainingRun)
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

    def claim_next_queued(self, owner: str, max_running: int) -> TrainingRun | None:
        """Atomically turn the oldest queued run into a running run owned by `owner`, within the cap.

        One UPDATE with the cap in its WHERE clause, in a transaction that holds the write lock from its
        start (as `admit` does), so two workers cannot both pass the count.
        """
        now = utcnow()
        running = select(func.count()).where(TrainingRun.status == RunStatus.RUNNING.value).scalar_subquery()
        oldest = (
            select(TrainingRun.id)
            .where(TrainingRun.status == RunStatus.QUEUED.value)
            .order_by(TrainingRun.created_at, TrainingRun.id)
            .limit(1)
        )
        with self._serialised_writing() as (session, written):
            candidate = session.scalar(oldest)
            if candidate is None:
                return None
            written.add(candidate)
            result = session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == candidate)
                .where(TrainingRun.status == RunStatus.QUEUED.value)
                .where(running < max_running)
                .values(status=RunStatus.RUNNING.value, owner=owner, started_at=now, heartbeat_at=now)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return None
        return self.get(candidate)

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

    def record_fixed_maze_seed(self, run_id: str, maze_seed: int) -> None:
        self._update(run_id, fixed_maze_seed=maze_seed)

    def record_onnx(self, run_id: str, **values: Any) -> None:
        """ONNX export state: `onnx_status` plus size, opset, timing, parity or the error."""
        unknown = set(values) - {c.name for c in TrainingRun.__table__.columns if c.name.startswith("onnx_")}
        if unknown:
            raise ValueError(f"not ONNX fields: {sorted(unknown)}")
        self._update(run_id, **values)

    def _update(self, run_id: str, **values: Any) -> None:
        with self._writing([run_id]) as (session, _):
            session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(**values))

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
        """Put an interrupted or stopped run back in the queue; False when it is in another state."""
        with self._writing([run_id]) as (session, _):
            result = session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id)
                .where(TrainingRun.status.in_([RunStatus.INTERRUPTED.value, RunStatus.STOPPED.value]))
                .values(
                    status=RunStatus.QUEUED.value,
                    finished_at=None,
                    error=None,
                    stop_requested=False,
                    owner=None,
                    onnx_status=None,
                    onnx_error=None,
                    stop_reason=None,
                    progress_version=TrainingRun.progress_version + 1,
                )
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

    def heartbeat(self, owner: str, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        with self._writing(run_ids) as (session, _):
            session.execute(
                update(TrainingRun)
                .where(TrainingRun.id.in_(run_ids))
                .where(TrainingRun.owner == owner)
                .where(TrainingRun.status == RunStatus.RUNNING.value)
                .values(heartbeat_at=utcnow())
            )

    def interrupt_stale(self, timeout: timedelta) -> list[str]:
        """Mark running runs whose worker stopped sending heartbeats as interrupted."""
        cutoff = utcnow() - timeout
        with self._writing() as (session, written):
            stale = session.scalars(
                select(TrainingRun.id)
                .where(TrainingRun.status == RunStatus.RUNNING.value)
                .where(TrainingRun.heartbeat_at < cutoff)
            ).all()
            reason = (
                f"the worker training this run went silent (heartbeat timeout {timeout.total_seconds():g} s)"
            )
            interrupted = [
                run_id
                for run_id in stale
                if self._interrupt(session, run_id, reason, heartbeat_before=cutoff)
            ]
            written.update(interrupted)
        return interrupted

    def interrupt_dead_local_owners(self, me: str) -> list[str]:
        """At start-up: runs owned by a process on this host that no longer exists are interrupted now.

        Runs of live processes (other workers of this service) are left alone; only their heartbeat
        going stale may interrupt them.
        """
        host, my_pid, _ = me.split(":")
        interrupted = []
        with self._writing() as (session, written):
            rows = session.execute(
                select(TrainingRun.id, TrainingRun.owner)
                .where(TrainingRun.status == RunStatus.RUNNING.value)
                .where(TrainingRun.owner.like(f"{host}:%"))
            ).all()
            for run_id, owner in rows:
                _, pid, _ = (owner or "::").split(":")
                if not pid.isdigit() or owner == me:
                    continue
                dead = int(pid) == int(my_pid) or not _pid_is_alive(int(pid))
                if dead and self._interrupt(session, run_id, "the service process training this run exited"):
                    interrupted.append(run_id)
            written.update(interrupted)
        return interrupted

    @staticmethod
    def _interrupt(
        session: Session, run_id: str, reason: str, heartbeat_before: datetime | None = None
    ) -> bool:
        statement = (
            update(TrainingRun)
            .where(TrainingRun.id == run_id)
            .where(TrainingRun.status == RunStatus.RUNNING.value)
        )
        if heartbeat_before is not None:
            # Re-checked in the UPDATE: a heartbeat committed since the SELECT keeps the run alive.
            statement = statement.where(TrainingRun.heartbeat_at < heartbeat_before)
        result = session.execute(
            statement.values(
                status=RunStatus.INTERRUPTED.value,
                finished_at=utcnow(),
                error=reason,
                progress_version=TrainingRun.progress_version + 1,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

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
