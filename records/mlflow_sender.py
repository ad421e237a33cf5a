"""The tracker's sender thread: replays queued MLflow operations in order, retrying through outages.

Training threads never talk to MLflow: they enqueue `Operation`s and carry on. One sender thread per
process applies them through one `MlflowClient`; when the store is down it keeps them, retries with
backoff and reports the outage per run (`on_tracking_status`). Consecutive metric points of a run are
merged into one request.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import threading
import time
from collections.abc import Callable

import structlog
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from core.errors import describe

log = structlog.get_logger(__name__)

MAX_PENDING_OPERATIONS = 50_000
MAX_METRICS_PER_BATCH = 900  # MLflow accepts at most 1,000 metrics per log_batch
PERMANENT_FAILURE_ATTEMPTS = 3
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0

SendMetrics = Callable[[MlflowClient, list[Metric]], None]


@dataclasses.dataclass
class Operation:
    """One queued MLflow call of a run (`run_key`: our run id, or what the outage is reported under)."""

    run_key: str
    description: str
    apply: Callable[[MlflowClient], None]
    attempts: int = 0
    # Metric points of a "log metrics" operation, and how to send any of the run's points: consecutive
    # such operations of a run are sent as one batch.
    metrics: list[Metric] | None = None
    send_metrics: SendMetrics | None = None
    # Called with the error when the sender gives up on the operation (a permanent failure).
    on_give_up: Callable[[str], None] | None = None


def metrics_operation(run_key: str, send_metrics: SendMetrics, metrics: list[Metric]) -> Operation:
    """An operation sending `metrics` of one run, mergeable with the run's next ones."""

    def send(client: MlflowClient) -> None:
        send_metrics(client, metrics)

    return Operation(run_key, "log metrics", send, metrics=metrics, send_metrics=send_metrics)


# MLflow's answers that no retry can change: among them a write to a deleted run (INVALID_PARAMETER_VALUE
# on a local store: "must be in the 'active' state"), as when a run is deleted while its last uploads are
# queued, and a run unknown to the store.
REFUSED_ERROR_CODES = frozenset({"INVALID_PARAMETER_VALUE", "INVALID_STATE", "RESOURCE_DOES_NOT_EXIST"})


def _is_refused(error: Exception) -> bool:
    """The store refused the operation for good, or the local file it uploads is gone (the run was
    deleted): give up at once, without backoff."""
    if isinstance(error, FileNotFoundError):
        return True
    refused = isinstance(error, MlflowException) and error.error_code in REFUSED_ERROR_CODES
    return refused and not _is_transient(error)


# What an outage's error says: connection refused, timeouts, a locked SQLite file, HTTP 503. The status
# code only as a number of its own: a run id in the message is 32 hex digits, and one with "503" inside
# (~0.7% of them) made a deleted run's refusal look like an outage, retried for as long as the sender ran.
_TRANSIENT = re.compile(
    r"Connection|connect|Timeout|timed out|Max retries|API request|locked|(?<![0-9a-f])503(?![0-9a-f])"
)


def _is_transient(error: Exception) -> bool:
    """Outages (connection refused, timeouts, a locked SQLite file) are retried without limit."""
    return isinstance(error, OSError) or _TRANSIENT.search(f"{type(error).__name__}: {error}") is not None


class MlflowSender:
    """The queue of MLflow operations and the thread that sends them.

    :param client: the sender thread's client (opened on its first operation).
    :param on_tracking_status: called with (run key, "ok" | "degraded", error) when that changes.
    """

    def __init__(
        self,
        client: Callable[[], MlflowClient],
        on_tracking_status: Callable[[str, str, str | None], None] | None = None,
    ) -> None:
        self._client = client
        self._on_tracking_status = on_tracking_status
        self._queue: queue.Queue[Operation] = queue.Queue(maxsize=MAX_PENDING_OPERATIONS)
        self._degraded_runs: set[str] = set()
        # Taken off the queue while merging metrics, to head the next operation: still unfinished.
        self._held: Operation | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send_loop, name="mlflow-sender", daemon=True)
        self._thread.start()

    def enqueue(self, operation: Operation) -> None:
        """Queue an operation; never blocks (a full queue drops it, with a warning)."""
        try:
            self._queue.put_nowait(operation)
        except queue.Full:
            log.warning("mlflow_operation_dropped", run=operation.run_key, operation=operation.description)

    def pending_operations(self) -> int:
        """Operations queued (or being sent) and not yet done: the backlog while MLflow is slow or down."""
        return self._queue.unfinished_tasks

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued so far was sent (or `timeout_s` passed).

        A queued operation counts as unfinished from `put` until the sender is done with it (sent or
        given up), so there is no moment where one is neither in the queue nor counted.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.05)
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        self.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout=2)

    def _next_operation(self) -> tuple[Operation, int]:
        """The next operation and how many queued ones it stands for: queued metric points of the same
        run are merged into one request."""
        operation = self._held or self._queue.get(timeout=0.2)
        self._held = None
        if operation.metrics is None or operation.send_metrics is None:
            return operation, 1
        metrics, merged = list(operation.metrics), 1
        while len(metrics) < MAX_METRICS_PER_BATCH:
            try:
                following = self._queue.get_nowait()
            except queue.Empty:
                break
            if following.metrics is None or following.run_key != operation.run_key:
                self._held = following
                break
            metrics.extend(following.metrics)
            merged += 1
        if merged == 1:
            return operation, 1
        return metrics_operation(operation.run_key, operation.send_metrics, metrics), merged

    def _send_loop(self) -> None:
        backoff = BACKOFF_START_S
        while not self._stop.is_set():
            try:
                operation, merged = self._next_operation()
            except queue.Empty:
                continue
            while not self._stop.is_set():
                try:
                    operation.apply(self._client())
                except Exception as error:
                    operation.attempts += 1
                    if not self._retry_after_failure(operation, error):
                        backoff = BACKOFF_START_S  # not an outage: the next operation starts afresh
                        break
                    self._stop.wait(backoff)
                    backoff = min(BACKOFF_MAX_S, backoff * 2)
                    continue
                backoff = BACKOFF_START_S
                if operation.metrics is None:
                    log.info("mlflow_sent", run=operation.run_key, operation=operation.description)
                self._mark_recovered(operation.run_key)
                break
            for _ in range(merged):
                self._queue.task_done()

    def _retry_after_failure(self, operation: Operation, error: Exception) -> bool:
        message = describe(error)
        # A refusal is not an outage: retrying it (with backoff) only held up every other run's operations
        # queued behind it, and a shutdown's flush, for ~25 s per deleted run.
        refused = _is_refused(error)
        if not refused and operation.run_key not in self._degraded_runs:
            self._degraded_runs.add(operation.run_key)
            log.warning(
                "mlflow_degraded", run=operation.run_key, operation=operation.description, error=message
            )
            self._notify(operation.run_key, "degraded", message)
        if not refused and (_is_transient(error) or operation.attempts < PERMANENT_FAILURE_ATTEMPTS):
            return True
        log.error(
            "mlflow_operation_failed", run=operation.run_key, operation=operation.description, error=message
        )
        if operation.on_give_up is not None:
            try:
                operation.on_give_up(message)
            except Exception as report_error:  # reporting must not stop the sender
                log.warning("mlflow_failure_not_reported", run=operation.run_key, error=str(report_error))
        return False

    def _mark_recovered(self, run_key: str) -> None:
        if run_key in self._degraded_runs:
            self._degraded_runs.discard(run_key)
            log.info("mlflow_recovered", run=run_key)
            self._notify(run_key, "ok", None)

    def _notify(self, run_key: str, status: str, error: str | None) -> None:
        if self._on_tracking_status is None:
            return
        try:
            self._on_tracking_status(run_key, status, error)
        except Exception as notify_error:  # the database may be down too; tracking must go on
            log.warning("tracking_status_not_recorded", run=run_key, error=str(notify_error))
