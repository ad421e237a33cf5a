"""Admission to the run queue: record a new run within the queue cap, claim the next within the run cap.

Both count runs and act on the count in one transaction that holds the write lock from its start
(`_serialised_writing`), so two workers cannot both pass the same count.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from records.tables import RunStatus, TrainingRun, utcnow
from records.transactions import RunTransactions


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
    policy: str = "planner"
    name: str | None = None
    tags: dict[str, str] | None = None
    notes: str | None = None
    notify_url: str | None = None
    notify_state: str | None = None
    register_as: str | None = None
    registry_status: str | None = None
    sweep_id: str | None = None
    sweep_trial: int | None = None


@dataclasses.dataclass(frozen=True)
class Admission:
    """What `RunAdmission.admit` decided about a start.

    :param run: the new queued run, the run an earlier start with the same idempotency key created
        (`earlier`), or None: the queue is full.
    :param waiting: queued runs that will still wait for a slot once the free slots are taken.
    """

    run: TrainingRun | None
    earlier: bool
    waiting: int


class RunAdmission(RunTransactions):
    """Adding runs to the queue and taking them out of it, within the caps."""

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
