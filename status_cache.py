"""Per-worker snapshots of run records, so `GET /training/status/{id}` answers on the event loop.

Why: under load, reading the database for every status request hops to a thread-pool thread and back.
Each hop must win the GIL from the training threads several times (waking the worker, every SQLite
call, waking the loop again); those hand-offs set both the tail latency and how much the training
threads slow down. Serving a recent snapshot from memory costs none of them.

Freshness, with several uvicorn workers sharing one database (each worker has its own cache):
- A snapshot is served only while it is at most `STATUS_CACHE_S` old (measured from when its read
  started), so a change made by another worker process shows within that bound. A background task
  re-reads every recently requested run in one query twice per bound, so hot runs never expire.
- Any write to the runs table by this process (API calls, training threads, heartbeats) makes every
  snapshot read before it unusable at once: with one worker, answers are exact.
- `settle()` lets a route that changed a run (stop, resume) wait out the bound before answering, so
  that once it answers, every worker's status shows the change.
- Misses (unknown to this worker, expired, invalidated) read the database, so new runs are found,
  unknown ids are 404 and a database outage is a 503 once the snapshots have expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import threading
import time
from typing import Any

import structlog
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from db_models import TrainingRun
from run_store import RunStore
from settings import Settings
from training_service import saved_file

log = structlog.get_logger(__name__)

IDLE_EVICT_S = 30.0  # a run nobody asked about for this long is no longer refreshed nor kept
_WROTE = "status_cache_wrote"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A run record as read from the database, with what else a status answer needs."""

    run: TrainingRun
    model_available: bool


@dataclasses.dataclass
class _Entry:
    snapshot: Snapshot
    read_at: float  # monotonic time the read *started*: the data is at least this recent
    generation: int  # this process's write generation when the read started
    used_at: float


@dataclasses.dataclass(frozen=True)
class _Read:
    """A database read in flight for one run, which later misses may share."""

    generation: int
    started: float
    task: asyncio.Task[Snapshot]


class StatusCache:
    """Recent run snapshots of this worker; see the module docstring for the freshness rules.

    :param store: run records.
    :param settings: `status_cache_s` is the bound; 0 turns the cache off (every request reads).
    """

    def __init__(self, store: RunStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self.max_age_s = settings.status_cache_s
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, _Read] = {}
        self._generations = itertools.count(1)
        self._generation = 0
        self._generation_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.max_age_s > 0

    # --- invalidation by this process's own writes ------------------------------------------------

    def watch_writes(self, session_factory: sessionmaker[Session]) -> None:
        """Invalidate on every write made through `session_factory` (all of RunStore's writes).

        Bumped when a write executes (a read starting later must not be kept as current) and again
        once its transaction committed (a read that started in between saw the old row).
        """
        event.listen(session_factory, "do_orm_execute", self._on_execute)
        event.listen(session_factory, "after_flush", self._on_flush)
        event.listen(session_factory, "after_commit", self._on_commit)

    def _on_execute(self, state: ORMExecuteState) -> None:
        if state.is_update or state.is_insert or state.is_delete:
            state.session.info[_WROTE] = True
            self.invalidate_all()

    def _on_flush(self, session: Session, _context: Any) -> None:
        session.info[_WROTE] = True
        self.invalidate_all()

    def _on_commit(self, session: Session) -> None:
        if session.info.pop(_WROTE, False):
            self.invalidate_all()

    def invalidate_all(self) -> None:
        """Thread-safe: no snapshot read before now is served again."""
        with self._generation_lock:
            self._generation = next(self._generations)

    # --- serving ----------------------------------------------------------------------------------

    async def get(self, run_id: str) -> Snapshot:
        """A snapshot no older than the bound; raises `RunNotFound` (404) or a database error (503)."""
        now = time.monotonic()
        entry = self._entries.get(run_id)
        if entry is not None and self._is_fresh(entry, now):
            entry.used_at = now
            return entry.snapshot
        return await self._read_through(run_id)

    def _is_fresh(self, entry: _Entry, now: float) -> bool:
        return entry.generation == self._generation and now - entry.read_at <= self.max_age_s

    async def _read_through(self, run_id: str) -> Snapshot:
        """Read the run; concurrent misses share one read when it started after the last local write
        and within the bound. The read is a task of its own: a client that leaves does not cancel it
        for the others."""
        if not self.enabled:
            return await run_in_threadpool(self._read_one, run_id)
        generation, now = self._generation, time.monotonic()
        inflight = self._inflight.get(run_id)
        if inflight is None or inflight.generation != generation or now - inflight.started > self.max_age_s:
            task = asyncio.get_running_loop().create_task(self._read_and_keep(run_id, generation, now))
            inflight = _Read(generation, now, task)
            self._inflight[run_id] = inflight
            task.add_done_callback(functools.partial(self._read_done, run_id))
        return await asyncio.shield(inflight.task)

    async def _read_and_keep(self, run_id: str, generation: int, started: float) -> Snapshot:
        snapshot = await run_in_threadpool(self._read_one, run_id)
        self._store_entry(run_id, snapshot, started, generation, used=True)
        return snapshot

    def _read_done(self, run_id: str, task: asyncio.Task[Snapshot]) -> None:
        inflight = self._inflight.get(run_id)
        if inflight is not None and inflight.task is task:
            del self._inflight[run_id]
        if not task.cancelled():
            task.exception()  # retrieved here: every client that waited for it may have left

    def _read_one(self, run_id: str) -> Snapshot:
        return self._snapshot(self._store.get(run_id))

    def _snapshot(self, run: TrainingRun) -> Snapshot:
        return Snapshot(run, saved_file(self._settings, run) is not None)

    def _store_entry(
        self, run_id: str, snapshot: Snapshot, read_at: float, generation: int, used: bool
    ) -> None:
        """Keep a read unless a newer one is already there (reads may finish out of order)."""
        current = self._entries.get(run_id)
        if current is not None and (current.generation, current.read_at) > (generation, read_at):
            return
        used_at = read_at if used or current is None else current.used_at
        self._entries[run_id] = _Entry(snapshot, read_at, generation, used_at)

    async def settle(self) -> None:
        """Wait out the bound: afterwards every worker's snapshots were read after this call began."""
        if self.enabled:
            await asyncio.sleep(self.max_age_s)

    # --- background refresh -----------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="status-cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.max_age_s / 2)
            try:
                await self.refresh()
            except Exception as error:  # e.g. a database outage: serve nothing stale, read through
                self._entries.clear()
                log.warning("status_cache_refresh_failed", error=(str(error).splitlines() or [""])[0])

    async def refresh(self) -> None:
        """Re-read every run requested lately, in one query; forget the others."""
        now = time.monotonic()
        for run_id in [r for r, e in self._entries.items() if now - e.used_at > IDLE_EVICT_S]:
            del self._entries[run_id]
        run_ids = list(self._entries)
        if not run_ids:
            return
        generation, started = self._generation, time.monotonic()
        snapshots = await run_in_threadpool(self._read_many, run_ids)
        for run_id in run_ids:
            if run_id in snapshots:
                self._store_entry(run_id, snapshots[run_id], started, generation, used=False)
            else:  # gone from the database
                self._entries.pop(run_id, None)

    def _read_many(self, run_ids: list[str]) -> dict[str, Snapshot]:
        return {run.id: self._snapshot(run) for run in self._store.get_many(run_ids)}

    def cached_ids(self) -> list[str]:
        return list(self._entries)
