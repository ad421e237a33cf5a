"""Live progress over WebSocket: `/ws/training/{experiment_id}` and the hub that feeds it.

Training threads never touch sockets or the event loop: they write progress snapshots to the
database (shared by every uvicorn worker). Each worker's hub polls the snapshots of the runs its
clients watch, encodes each message once and fans the same text out to per-client bounded queues, so
a slow or vanished client can only lose its own stale messages, never slow training or other clients.
Each pushed message also carries the metric points the run logged since the previous one (read from
MLflow: records/live_points.py), so live charts are as dense as the finished run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from typing import Any

import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from starlette.websockets import WebSocketState

from api.security import websocket_rejection, websocket_subprotocol
from core.background import cancel_and_wait
from core.errors import RunNotFound, describe
from core.settings import Settings
from records.live_points import NO_POINTS, PointCursor, ReadHistory, read_history
from records.status_cache import StatusCache
from records.store import RunStore
from records.tables import TrainingRun
from records.views import progress_message

log = structlog.get_logger(__name__)

CLIENT_QUEUE_SIZE = 8
SEND_TIMEOUT_S = 10.0
CLOSE_UNKNOWN_RUN = 4404
CLOSE_SERVER_SHUTDOWN = 1001
CLOSE_POLICY_VIOLATION = 1008
# A slow or unreachable MLflow must not hold up the progress of every watched run: past this, a
# message goes without points and the next one carries them.
POINTS_READ_TIMEOUT_S = 2.0

router = APIRouter(tags=["progress"])


@dataclasses.dataclass(frozen=True)
class Frame:
    """One progress message, serialised once and sent as the same text to every client of the run."""

    text: str
    final: bool
    status: str

    @classmethod
    def of(cls, message: dict[str, Any]) -> Frame:
        # The same encoding as Starlette's send_json.
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        return cls(text, message["type"] == "final", str(message["status"]))


# Wakes a client's stream when the client has left; never sent.
CLIENT_LEFT = Frame("", final=True, status="")


@dataclasses.dataclass
class _Watched:
    """Per-run fan-out state in this worker."""

    queues: set[asyncio.Queue[Frame | None]] = dataclasses.field(default_factory=set)
    version: int = -1
    status: str = ""
    pushed_at: float = 0.0
    points: PointCursor = dataclasses.field(default_factory=PointCursor)


class ProgressHub:
    """Polls the progress of watched runs and pushes messages to their clients' queues.

    :param store: run records.
    :param settings: `progress_interval_s` sets the push period.
    :param read_history: reads a metric's history from MLflow, `(mlflow_run_id, key) → [(step, value)]`;
        None: messages carry no points.
    """

    def __init__(self, store: RunStore, settings: Settings, read_history: ReadHistory | None = None) -> None:
        self._store = store
        self._settings = settings
        self._read_history = read_history
        self._interval_s = settings.progress_interval_s
        # State changes should reach clients within a second even when the interval is long.
        self._poll_s = min(1.0, settings.progress_interval_s / 2)
        self._watched: dict[str, _Watched] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll_loop(), name="progress-hub")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for watched in self._watched.values():
            for queue in watched.queues:
                _offer(queue, None)

    def subscribe(self, run_id: str, current_version: int, current_status: str) -> asyncio.Queue[Any]:
        watched = self._watched.setdefault(run_id, _Watched())
        if not watched.queues:
            watched.version, watched.status, watched.pushed_at = (
                current_version,
                current_status,
                time.monotonic(),
            )
        queue: asyncio.Queue[Frame | None] = asyncio.Queue(maxsize=CLIENT_QUEUE_SIZE)
        watched.queues.add(queue)
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[Any]) -> None:
        watched = self._watched.get(run_id)
        if watched is None:
            return
        watched.queues.discard(queue)
        if not watched.queues:
            del self._watched[run_id]

    def client_count(self) -> int:
        return sum(len(w.queues) for w in self._watched.values())

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self._poll_once()
            except Exception as error:  # a database outage must not end live updates for good
                log.warning("progress_poll_failed", error=describe(error))

    async def _poll_once(self) -> None:
        run_ids = list(self._watched)
        if not run_ids:
            return
        versions = await run_in_threadpool(self._store.latest_versions, run_ids)
        now = time.monotonic()
        for run_id in run_ids:
            watched = self._watched.get(run_id)
            if watched is None or run_id not in versions:
                continue
            changed = versions[run_id] != watched.version
            if not changed and now - watched.pushed_at < self._interval_s:
                continue
            run = await run_in_threadpool(self._store.get, run_id)
            state_changed = run.status != watched.status
            if not state_changed and now - watched.pushed_at < self._interval_s:
                continue  # progress moved, but the next periodic push will carry it
            message = progress_message(run, self._settings)
            message.update(await self._new_points(run, watched.points))
            frame = Frame.of(message)
            watched.version, watched.status, watched.pushed_at = versions[run_id], run.status, now
            for queue in list(watched.queues):
                _offer(queue, frame)

    async def _new_points(self, run: TrainingRun, cursor: PointCursor) -> dict[str, object]:
        """The `points` and `points_after` fields of the run's next message (null when MLflow has no
        run for it yet, or cannot be read now: a later message then carries the points)."""
        if self._read_history is None or run.mlflow_run_id is None or run.tracking_status == "degraded":
            return NO_POINTS
        try:
            async with asyncio.timeout(POINTS_READ_TIMEOUT_S):
                history = await run_in_threadpool(read_history, self._read_history, run.mlflow_run_id)
        except Exception as error:  # MLflow down or slow: progress still goes out, without points
            log.info("live_points_unavailable", run_id=run.id, error=describe(error) or "timed out")
            return NO_POINTS
        return cursor.take(history).message_fields()


def _offer(queue: asyncio.Queue[Any], message: Frame | None) -> None:
    """Put without waiting; a full queue drops its oldest message (a slow client only misses the stale)."""
    while True:
        try:
            queue.put_nowait(message)
            return
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()


@router.websocket("/ws/training/{experiment_id}")
async def training_progress(websocket: WebSocket, experiment_id: str) -> None:
    """Streams JSON progress messages for one run (schema in the README); closes 1000 after `final`,
    4404 for an unknown run."""
    cache: StatusCache = websocket.app.state.status_cache
    settings: Settings = websocket.app.state.settings
    hub: ProgressHub = websocket.app.state.progress_hub
    await websocket.accept(subprotocol=websocket_subprotocol(websocket))
    rejection = websocket_rejection(websocket, settings)
    if rejection is not None:
        await websocket.close(code=CLOSE_POLICY_VIOLATION, reason=rejection)
        return
    try:
        # From this worker's snapshots (see records/status_cache.py): 100 clients connecting at once would
        # otherwise be 100 thread-pool reads, each fighting the training threads for the GIL.
        run = (await cache.get(str(uuid.UUID(experiment_id)))).run
    except (ValueError, RunNotFound):
        await websocket.close(code=CLOSE_UNKNOWN_RUN, reason="unknown experiment_id")
        return
    queue = hub.subscribe(run.id, run.progress_version, run.status)
    try:
        # The points so far are in `GET /experiments/{id}`'s history; pushed messages carry what follows.
        first = Frame.of({**progress_message(run, settings), **NO_POINTS})
        await websocket.send_text(first.text)
        if first.final:
            await websocket.close(code=1000, reason=f"run {run.status}")
            return
        await _stream(websocket, queue)
    except (WebSocketDisconnect, TimeoutError):
        pass
    finally:
        hub.unsubscribe(run.id, queue)


async def _stream(websocket: WebSocket, queue: asyncio.Queue[Any]) -> None:
    """Forward queued messages until the run ends, the server stops, or the client leaves.

    Waiting on the queue alone would never notice a client that left, so a receiver task marks `left`
    and wakes this loop through the same queue: one wait per message, where racing the two needed two
    new tasks per message (and the send timeout a third), for every client.
    """
    left = asyncio.Event()
    receiver = asyncio.create_task(_until_disconnect(websocket, queue, left))
    try:
        while True:
            frame: Frame | None = await queue.get()
            if left.is_set():
                return
            if frame is None:
                await websocket.close(code=CLOSE_SERVER_SHUTDOWN, reason="server shutting down")
                return
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await websocket.send_text(frame.text)
            if frame.final:
                await websocket.close(code=1000, reason=f"run {frame.status}")
                return
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
            await receiver


async def _until_disconnect(websocket: WebSocket, queue: asyncio.Queue[Any], left: asyncio.Event) -> None:
    try:
        while websocket.application_state == WebSocketState.CONNECTED:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
    finally:
        if not left.is_set():
            left.set()
            _offer(queue, CLIENT_LEFT)
