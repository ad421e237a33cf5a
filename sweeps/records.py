"""Database operations on `sweeps` and on the runs that are their trials."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.errors import SweepNotFound
from records.tables import RunStatus, Sweep, SweepStatus, TrainingRun, utcnow


class SweepStore:
    """The sweeps table; every worker reads and writes it, so nothing here is held in memory.

    :param session_factory: sessions bound to the service's engine.
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def create(self, sweep_id: str, request: dict[str, Any]) -> Sweep:
        sweep = Sweep(
            id=sweep_id,
            status=SweepStatus.RUNNING.value,
            algorithm=request["algorithm"],
            maze_size=request["maze_size"],
            request=request,
            n_trials=request["n_trials"],
            parallel_trials=request["parallel_trials"],
            trials_claimed=0,
            created_at=utcnow(),
        )
        with self._session_factory() as session, session.begin():
            session.add(sweep)
        return sweep

    def get(self, sweep_id: str) -> Sweep:
        with self._session_factory() as session:
            sweep = session.get(Sweep, sweep_id)
        if sweep is None:
            raise SweepNotFound(sweep_id)
        return sweep

    def list(self, limit: int, offset: int) -> tuple[Sequence[Sweep], int]:
        """A page of sweeps, newest first, and how many there are."""
        with self._session_factory() as session:
            total = session.scalar(select(func.count()).select_from(Sweep)) or 0
            query = select(Sweep).order_by(Sweep.created_at.desc(), Sweep.id).limit(limit).offset(offset)
            return session.scalars(query).all(), total

    def unfinished(self) -> Sequence[Sweep]:
        """Sweeps still running or stopping, oldest first."""
        final = [SweepStatus.COMPLETED.value, SweepStatus.STOPPED.value]
        with self._session_factory() as session:
            query = select(Sweep).where(Sweep.status.not_in(final)).order_by(Sweep.created_at)
            return session.scalars(query).all()

    def trial_runs(self, sweep_id: str) -> Sequence[TrainingRun]:
        with self._session_factory() as session:
            query = (
                select(TrainingRun).where(TrainingRun.sweep_id == sweep_id).order_by(TrainingRun.sweep_trial)
            )
            return session.scalars(query).all()

    def claim_trial(self, sweep: Sweep, finished_trials: int) -> bool:
        """Hand out one more trial of `sweep` if its count and `parallel_trials` allow; True if this
        caller got it. A compare-and-set on `trials_claimed`, so two workers never both get the same
        one; `finished_trials` (read before) only grows, so a stale count never lets too many run.
        """
        claimed = sweep.trials_claimed
        if claimed >= sweep.n_trials or claimed - finished_trials >= sweep.parallel_trials:
            return False
        with self._session_factory() as session, session.begin():
            result = session.execute(
                update(Sweep)
                .where(Sweep.id == sweep.id)
                .where(Sweep.trials_claimed == claimed)
                .where(Sweep.status == SweepStatus.RUNNING.value)
                .values(trials_claimed=claimed + 1)
            )
        won = result.rowcount == 1  # type: ignore[attr-defined]
        if won:
            sweep.trials_claimed = claimed + 1
        return won

    def release_trial(self, sweep_id: str) -> None:
        """Give back a claimed trial that will not run (its retry is queued in the study)."""
        with self._session_factory() as session, session.begin():
            session.execute(
                update(Sweep).where(Sweep.id == sweep_id).values(trials_claimed=Sweep.trials_claimed - 1)
            )

    def set_mlflow_run(self, sweep_id: str, mlflow_run_id: str) -> bool:
        """Record the sweep's parent MLflow run, unless another worker already did; True if recorded."""
        with self._session_factory() as session, session.begin():
            result = session.execute(
                update(Sweep)
                .where(Sweep.id == sweep_id)
                .where(Sweep.mlflow_run_id.is_(None))
                .values(mlflow_run_id=mlflow_run_id)
            )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def change_status(self, sweep_id: str, before: Sequence[SweepStatus], after: SweepStatus) -> bool:
        """Move the sweep from one of `before` to `after`; True if this caller made the change."""
        values: dict[str, Any] = {"status": after.value}
        if after.is_final:
            values["finished_at"] = utcnow()
        with self._session_factory() as session, session.begin():
            result = session.execute(
                update(Sweep)
                .where(Sweep.id == sweep_id)
                .where(Sweep.status.in_([status.value for status in before]))
                .values(**values)
            )
        return result.rowcount == 1  # type: ignore[attr-defined]


def is_active(run: TrainingRun) -> bool:
    return not RunStatus(run.status).is_final
