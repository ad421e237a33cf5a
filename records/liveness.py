"""Liveness of the workers that train runs: heartbeats, and interrupting the runs of a worker that is gone.

"Is this run still alive" needs evidence: a heartbeat that stopped, or an owner process on this host
that no longer exists. A worker that does not know a run never interrupts it for that alone.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from records.tables import RunStatus, TrainingRun, utcnow
from records.transactions import RunTransactions


def worker_identity() -> str:
    """`host:pid:nonce`: the nonce tells a restarted process apart from its predecessor with the same pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def pid_is_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_is_gone(owner: str | None, me: str) -> bool:
    """Whether `owner` (a `worker_identity()`) was a process on this host that no longer runs, `me`'s
    predecessor with the same pid included (a container's pid 1); False for owners on other hosts (only
    their heartbeats can tell)."""
    if not owner or owner == me:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return int(pid) == os.getpid() or not pid_is_alive(int(pid))


class RunLiveness(RunTransactions):
    """Heartbeats of running runs, and the interruption of runs whose worker is gone."""

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
                dead = int(pid) == int(my_pid) or not pid_is_alive(int(pid))
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
