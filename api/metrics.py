"""`GET /metrics`: the service's Prometheus metrics, summed over every uvicorn worker of this host.

Each worker records its own numbers (HTTP requests, its MLflow backlog, its WebSocket clients) in
prometheus-client's multiprocess files under one directory; a scrape, answered by any worker, merges
them. Numbers that live in the database (runs by state, queue length, steps/s of running runs) are
read at scrape time, once, by the worker that answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from api.deps import StoreDep
from api.security import ASGIApp, Message, Receive, Scope, Send
from mlflow_client import Tracker
from records.liveness import pid_is_alive
from records.store import RunStore
from records.tables import RunStatus
from websocket import ProgressHub

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "rlmaze"
SAMPLE_INTERVAL_S = 1.0
# Requests that matched no route share one label: raw paths would make one series per URL ever tried.
UNMATCHED_ROUTE = "unmatched"
MAX_RUNNING_LISTED = 500


class _ProcessMetrics:
    """The metrics each worker process records itself (created once per process)."""

    def __init__(self) -> None:
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time from receiving an HTTP request to the end of its answer, by method and route template.",
            ["method", "route"],
        )
        # livesum: the sum over the workers alive now; a stopped worker's last value no longer counts.
        self.mlflow_backlog = Gauge(
            f"{PREFIX}_mlflow_pending_operations",
            "MLflow logging operations queued and not yet sent (grows while MLflow is unreachable).",
            multiprocess_mode="livesum",
        )
        self.websocket_clients = Gauge(
            f"{PREFIX}_websocket_clients",
            "WebSocket clients connected to the progress stream.",
            multiprocess_mode="livesum",
        )


_process_metrics: _ProcessMetrics | None = None
_directory: Path | None = None


def use_metrics_directory(data_dir: Path) -> Path:
    """Record this process's metrics in multiprocess files, shared by every worker on this host.

    The directory is `<data_dir>/metrics/<hostname>` (one per host: a `DATA_DIR` shared between
    machines must not mix their processes), exported as `PROMETHEUS_MULTIPROC_DIR` for
    prometheus-client. Files left by processes that are gone (an earlier start) are removed, so their
    gauges and counts do not add up forever. The first call in a process decides; later calls (more
    apps in one process, as in tests) keep its directory.

    :param data_dir: the service's `DATA_DIR`.
    """
    global _process_metrics, _directory
    if _directory is None:
        # Overwritten, not kept, when inherited: a service started by another one has its own DATA_DIR.
        directory = data_dir.resolve() / "metrics" / socket.gethostname()
        directory.mkdir(parents=True, exist_ok=True)
        _remove_dead_processes_files(directory)
        os.environ[MULTIPROC_ENV] = str(directory)
        # prometheus-client chooses its value storage when it is imported, from the environment; the
        # directory is known only once settings are read, so choose it again (as its own tests do).
        prometheus_values.ValueClass = prometheus_values.MultiProcessValue()
        _process_metrics = _ProcessMetrics()
        _directory = directory
    return _directory


def _metrics() -> _ProcessMetrics:
    if _process_metrics is None:
        raise RuntimeError("use_metrics_directory() must be called before metrics are recorded")
    return _process_metrics


def _remove_dead_processes_files(directory: Path) -> None:
    for path in directory.glob("*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not pid_is_alive(int(pid)):
            path.unlink(missing_ok=True)


class RequestMetrics:
    """ASGI middleware counting and timing HTTP requests by route template (`/training/status/{id}`).

    :param app: the wrapped ASGI app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app raises before answering
        started = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            # The router writes the matched route into the scope it was given (this one).
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            metrics = _metrics()
            metrics.requests.labels(scope["method"], route, str(status)).inc()
            metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - started)


class RunsCollector(Collector):
    """Run counts and speeds from the database, read when scraped.

    :param store: run records.
    """

    def __init__(self, store: RunStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        counts = self._store.count_by_status()
        by_state = GaugeMetricFamily(
            f"{PREFIX}_runs", "Training runs by state (all workers, from the database).", labels=["state"]
        )
        for state in RunStatus:
            by_state.add_metric([state.value], counts.get(state.value, 0))
        yield by_state
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_length",
            "Runs waiting for a free training slot.",
            value=counts.get(RunStatus.QUEUED.value, 0),
        )
        speed = GaugeMetricFamily(
            f"{PREFIX}_training_steps_per_second",
            "Environment steps per second of each running run (its latest progress snapshot).",
            labels=["experiment_id", "algorithm"],
        )
        running, _ = self._store.list_runs(status=RunStatus.RUNNING.value, limit=MAX_RUNNING_LISTED)
        for run in running:
            if run.fps is not None:
                speed.add_metric([run.id, run.algorithm], run.fps)
        yield speed


def _exposition(store: RunStore) -> bytes:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(_directory))
    registry.register(RunsCollector(store))
    return bytes(generate_latest(registry))


router = APIRouter(tags=["metrics"])
METRICS_PATH = "/metrics"


@router.get(
    METRICS_PATH,
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
)
async def metrics(store: StoreDep) -> Response:
    """HTTP requests and latencies per route, runs by state, queue length, steps/s per running run,
    MLflow backlog and WebSocket clients, summed over this host's workers."""
    return Response(await run_in_threadpool(_exposition, store), media_type=CONTENT_TYPE_LATEST)


class MetricsSampler:
    """Copies this worker's MLflow backlog and WebSocket client count into its gauges every second.

    :param tracker: this worker's MLflow logger.
    :param hub: this worker's WebSocket progress hub.
    """

    def __init__(self, tracker: Tracker, hub: ProgressHub) -> None:
        self._tracker = tracker
        self._hub = hub
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample_loop(), name="metrics-sampler")

    async def stop(self) -> None:
        """Stop sampling; this worker's live gauges stop counting in other workers' scrapes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        mark_process_dead(os.getpid(), str(_directory))

    async def _sample_loop(self) -> None:
        metrics = _metrics()
        while True:
            metrics.mlflow_backlog.set(self._tracker.pending_operations())
            metrics.websocket_clients.set(self._hub.client_count())
            await asyncio.sleep(SAMPLE_INTERVAL_S)
