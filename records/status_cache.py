"""Per-worker snapshots of run records, so `GET /training/status/{id}` answers on the event loop.

Why: under load, reading the database for every status request hops to a thread-pool thread and back.
Each hop must win the GIL from the training threads several times (waking the worker, every SQLite
call, waking the loop again); those hand-offs set both the tail latency and how much the training
threads slow down. Serving a recent snapshot from memory costs none of them.

Freshness, with several uvicorn workers sharing one database (each worker has its own cache):
- A snapshot is served only while it is at most `STATUS_CACHE_S` old (measured from when its read
  started), so a change made by another worker process shows within that bound. A background task
  re-reads every recently requested run in one query twice per bound, so hot runs never expire.
- Every write through this process's `RunStore` (API calls, training threads, heartbeats) announces
  the runs it wrote once committed, which makes their snapshots read before it unusable at once:
  with one worker, answers are exact.
- `settle()` lets a route that changed a run (stop, resume) wait out the bound before answering, so
  that once it answers, every worker's status shows the change.
- Misses (unknown to this worker, expired, invalidated) read the database, so new runs are found,
  unknown ids are 404 and a database outage is a 503 once the snapshots have expired.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import threading
import time
from collections.abc import Collection

import structlog
from fastapi.concurrency import run_in_threadpool

from core.background import cancel_and_wait
from core.errors import describe
from core.settings import Settings
from records.store import RunStore
from records.tables import TrainingRun
from records.views import training_status

log = structlog.get_logger(__name__)

IDLE_EVICT_S = 30.0  # a run nobody asked about for this long is no longer refreshed nor kept


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A run record as read from the database, and the status answer made from it.

    :param status_json: the `GET /training/status` answer, encoded when the record was read (on a
        thread-pool thread): serving it costs the event loop no model building or serialisation.
        Its `elapsed_s` / `eta_s` are as of that read, so at most STATUS_CACHE_S old.
    """

    run: TrainingRun
    status_json: bytes


@dataclasses.dataclass
class _Entry:
    snapshot: Snapshot
    read_at: float  # monotonic time the read *started*: the data is at least this recent
    stamp: int  # taken when the read started; compared with the stamps of this process's writes
    used_at: float


@dataclasses.dataclass(frozen=True)
class _Read:
    """A database read in flight for one run, which later misses may share."""

    stamp: int
    started: float
    task: asyncio.Task[Snapshot]


class StatusCache:
    """Recent run snapshots of this worker; see the module docstring for the freshness rules.

    :param store: run records; the cache follows the writes this process makes through it.
    :param settings: `status_cache_s` is the bound; 0 turns the cache off (every request reads).
    """

    def __init__(self, store: RunStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self.max_age_s = settings.status_cache_s
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, _Read] = {}
        # One counter orders reads and writes; `next()` on it is atomic, so any thread may draw.
        self._stamps = itertools.count(1)
        # Run id -> (stamp, monotonic time) of this process's last write to it.
        self._written: dict[str, tuple[int, float]] = {}
        self._written_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        store.on_write.append(self.invalidate)

    @property
    def enabled(self) -> bool:
        return self.max_age_s > 0

    # --- invalidation by this process's own writes ------------------------------------------------

    def invalidate(self, run_ids: Collection[str]) -> None:
        """Thread-safe: no snapshot of these runs read before now is served again."""
        with self._written_lock:
            stamp, now = next(self._stamps), time.monotonic()
            for run_id in run_ids:
                self._written[run_id] = (stamp, now)

    def _written_since(self, run_id: str, stamp: int) -> bool:
        """Did this process write the run after a read stamped `stamp` started?"""
        return self._written.get(run_id, (0, 0.0))[0] > stamp

    def _forget_old_writes(self) -> None:
        """A write older than the bound no longer matters: every read that started before it is too old
        to be served anyway."""
        horizon = time.monotonic() - self.max_age_s - 1.0
        with self._written_lock:
            for run_id in [r for r, (_, at) in self._written.items() if at < horizon]:
                del self._written[run_id]

    # --- serving ----------------------------------------------------------------------------------

    async def get(self, run_id: str) -> Snapshot:
        """A snapshot no older than the bound; raises `RunNotFound` (404) or a database error (503)."""
        now = time.monotonic()
        entry = self._entries.get(run_id)
        if entry is not None and self._is_fresh(run_id, entry, now):
            entry.used_at = now
            return entry.snapshot
        return await self._read_through(run_id)

    def _is_fresh(self, run_id: str, entry: _Entry, now: float) -> bool:
        return now - entry.read_at <= self.max_age_s and not self._written_since(run_id, entry.stamp)

    async def _read_through(self, run_id: str) -> Snapshot:
        """Read the run; concurrent misses share one read when it started after the last local write
        and within the bound. The read is a task of its own: a client that leaves does not cancel it
        for the others."""
        if not self.enabled:
            return await run_in_threadpool(self._read_one, run_id)
        now = time.monotonic()
        inflight = self._inflight.get(run_id)
        if (
            inflight is None
            or now - inflight.started > self.max_age_s
            or self._written_since(run_id, inflight.stamp)
        ):
            stamp = next(self._stamps)
            task = asyncio.get_running_loop().create_task(self._read_and_keep(run_id, stamp, now))
            inflight = _Read(stamp, now, task)
            self._inflight[run_id] = inflight
            task.add_done_callback(functools.partial(self._read_done, run_id))
        return await asyncio.shield(inflight.task)

    async def _read_and_keep(self, run_id: str, stamp: int, started: float) -> Snapshot:
        snapshot = await run_in_threadpool(self._read_one, run_id)
        self._store_entry(run_id, snapshot, started, stamp, used=True)
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
        return Snapshot(run, training_status(run, self._settings).model_dump_json().encode())

    def _store_entry(self, run_id: str, snapshot: Snapshot, read_at: float, stamp: int, used: bool) -> None:
        """Keep a read unless a newer one is already there (reads may finish out of order)."""
        current = self._entries.get(run_id)
        if current is not None and current.stamp > stamp:
            return
        used_at = read_at if used or current is None else current.used_at
        self._entries[run_id] = _Entry(snapshot, read_at, stamp, used_at)

    async def settle(self) -> None:
        """Wait out the bound: afterwards every worker's snapshots were read after this call began."""
        if self.enabled:
            await asyncio.sleep(self.max_age_s)

    # --- background refresh -----------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="status-cache")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.max_age_s / 2)
            try:
                await self.refresh()
            except Exception as error:  # e.g. a database outage: serve nothing stale, read through
                self._entries.clear()
                log.warning("status_cache_refresh_failed", error=describe(error))

    async def refresh(self) -> None:
        """Re-read every run requested lately, in one query; forget the others."""
        now = time.monotonic()
        for run_id in [r for r, e in self._entries.items() if now - e.used_at > IDLE_EVICT_S]:
            del self._entries[run_id]
        self._forget_old_writes()
        run_ids = list(self._entries)
        if not run_ids:
            return
        stamp, started = next(self._stamps), time.monotonic()
        snapshots = await run_in_threadpool(self._read_many, run_ids)
        for run_id in run_ids:
            if run_id in snapshots:
                self._store_entry(run_id, snapshots[run_id], started, stamp, used=False)
            else:  # gone from the database
                self._entries.pop(run_id, None)

    def _read_many(self, run_ids: list[str]) -> dict[str, Snapshot]:
        return {run.id: self._snapshot(run) for run in self._store.get_many(run_ids)}

    def cached_ids(self) -> list[str]:
        return list(self._entries)
