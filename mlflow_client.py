"""Logging to MLflow: a buffered, outage-tolerant logger for training runs (`records/mlflow_runs.py`
reads them back).

Training threads never talk to MLflow. They enqueue operations; one sender thread per process
replays them in order through `MlflowClient` with explicit run ids (no fluent "active run" shared
between threads). When the store is down, the sender keeps the operations, retries with backoff,
and reports the outage; training carries on.
"""

from __future__ import annotations

import dataclasses
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import structlog
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from core.errors import describe
from records.mlflow_runs import MlflowRuns, open_client

if TYPE_CHECKING:
    from mlflow.models import Model

log = structlog.get_logger(__name__)

MAX_PENDING_OPERATIONS = 50_000
MAX_METRICS_PER_BATCH = 900  # MLflow accepts at most 1,000 metrics per log_batch
MAX_PARAM_LENGTH = 500
PERMANENT_FAILURE_ATTEMPTS = 3
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
ONNX_ARTIFACT_PATH = "onnx_model"  # the run's copy; records/files.py ARTIFACT_PATHS downloads from it
LOGGED_MODEL_NAME = "maze_policy"
RUN_TAG = "experiment_id"  # our run id, on the MLflow run and its logged model
# Makes the MLflow 3 UI open the experiment in its classic (model training) view, not the GenAI one.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# Our final states → MLflow's terminal run states.
TERMINAL_STATUS = {
    "completed": "FINISHED",
    "failed": "FAILED",
    "stopped": "KILLED",
    "interrupted": "KILLED",
}


def is_tracking_server(tracking_uri: str) -> bool:
    """An MLflow server (http/https): it stores artifacts itself; clients must not pick a local path."""
    return urlparse(tracking_uri).scheme in ("http", "https")


def _is_transient(error: Exception) -> bool:
    """Outages (connection refused, timeouts, a locked SQLite file) are retried without limit."""
    text = f"{type(error).__name__}: {error}"
    markers = ("Connection", "connect", "Timeout", "timed out", "Max retries", "API request", "locked", "503")
    return isinstance(error, OSError) or any(marker in text for marker in markers)


def _save_onnx_model(onnx_path: Path, model_dir: Path, description: Model | None = None) -> Path:
    """Save the ONNX policy as an MLflow `onnx` flavour model in `model_dir`, with its signature and an
    input example (the start of two held-out mazes, as the environment observes them)."""
    import mlflow.onnx
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature

    import maze_env
    from agents.onnx_policy import OnnxPolicy

    model = onnx.load(str(onnx_path))
    maze_size = model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    example = np.stack(
        [
            maze_env.MazeEnv(maze_size=maze_size, maze_mode="fixed", seed=seed).reset()[0]
            for seed in maze_env.eval_maze_seeds(2)
        ]
    )
    signature = infer_signature(example, OnnxPolicy(onnx_path).outputs(example))
    # Explicit requirements: MLflow would otherwise infer them in a subprocess after every run.
    requirements = [f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"]
    mlflow.onnx.save_model(
        model,
        str(model_dir),
        mlflow_model=description,
        signature=signature,
        input_example=example,
        save_as_external_data=False,
        pip_requirements=requirements,
    )
    return model_dir


@dataclasses.dataclass
class _Operation:
    run_key: str
    description: str
    apply: Callable[[MlflowClient], None]
    attempts: int = 0
    # Metric points of a "log metrics" operation: consecutive ones of a run are sent as one batch.
    metrics: list[Metric] | None = None
    tracked: TrackedRun | None = None


@dataclasses.dataclass
class TrackedRun:
    """Our run's handle on its MLflow run; the MLflow id is known once the sender has created it."""

    run_key: str
    mlflow_run_id: str | None = None
    experiment_id: str | None = None


class Tracker:
    """Buffered MLflow logging for every run of this process.

    :param tracking_uri: MLflow tracking URI.
    :param experiment_name: MLflow experiment holding the runs.
    :param artifact_dir: artifact root for a newly created experiment on a local store.
    :param on_run_created: called with (our run id, MLflow run id) once MLflow knows the run.
    :param on_tracking_status: called with (our run id, "ok" | "degraded", error) when that changes.

    `runs` reads the same store; it knows the experiment id as soon as the sender has set it up.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        artifact_dir: Path | None = None,
        on_run_created: Callable[[str, str], None] | None = None,
        on_tracking_status: Callable[[str, str, str | None], None] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self._artifact_dir = artifact_dir
        self._on_run_created = on_run_created
        self._on_tracking_status = on_tracking_status
        self._client: MlflowClient | None = None  # the sender thread's; opened on its first operation
        self.runs = MlflowRuns(tracking_uri, experiment_name)
        self._queue: queue.Queue[_Operation] = queue.Queue(maxsize=MAX_PENDING_OPERATIONS)
        self._degraded_runs: set[str] = set()
        # Taken off the queue while merging metrics, to head the next operation: still unfinished.
        self._held: _Operation | None = None
        self._stop = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name="mlflow-sender", daemon=True)
        self._sender.start()

    # --- client and experiment ------------------------------------------------------------------

    def _mlflow(self) -> MlflowClient:
        if self._client is None:
            self._client = open_client(self.tracking_uri)
        return self._client

    def _experiment_id(self) -> str:
        """The experiment's id; created when it does not exist yet, then known to `runs` as well."""
        if self.runs.experiment_id() is None:
            location = self._artifact_dir.resolve().as_uri() if self._artifact_dir else None
            try:
                self._mlflow().create_experiment(
                    self.experiment_name,
                    artifact_location=location,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            except MlflowException:
                if self.runs.experiment_id() is None:  # else another worker created it first
                    raise
        experiment_id = self.runs.experiment_id()
        if experiment_id is None:
            raise RuntimeError(f"MLflow experiment {self.experiment_name} not found after creating it")
        return experiment_id

    def prepare(self) -> None:
        """Set up the store and experiment on the sender thread, ahead of the first run or request."""

        def prepare(client: MlflowClient) -> None:
            # Also for an experiment created before the tag was set, or by another tool.
            client.set_experiment_tag(self._experiment_id(), EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

        self._enqueue(_Operation("service", "prepare experiment", prepare))

    # --- logging API (called from training threads; never blocks) -----------------------------------

    def start_run(self, run_key: str, run_name: str, tags: Mapping[str, str]) -> TrackedRun:
        tracked = TrackedRun(run_key=run_key)

        def create(client: MlflowClient) -> None:
            experiment_id = self._experiment_id()
            existing = client.search_runs(
                [experiment_id], filter_string=f"tags.{RUN_TAG} = '{run_key}'", max_results=1
            )
            if existing:
                run = existing[0]
                running = RunStatus.to_string(RunStatus.RUNNING)
                if run.info.status != running:  # a resumed run: it trains again
                    client.update_run(run.info.run_id, status=running)
            else:
                run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
            tracked.mlflow_run_id = run.info.run_id
            tracked.experiment_id = experiment_id
            if self._on_run_created is not None:
                self._on_run_created(run_key, run.info.run_id)

        self._enqueue(_Operation(run_key, "create run", create))
        return tracked

    def log_params(self, tracked: TrackedRun, params: Mapping[str, Any]) -> None:
        items = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in sorted(params.items())]

        def send(client: MlflowClient) -> None:
            client.log_batch(self._run_id(tracked), params=items)

        self._enqueue(_Operation(tracked.run_key, "log params", send))

    def set_tags(self, tracked: TrackedRun, tags: Mapping[str, str]) -> None:
        items = [RunTag(key, value) for key, value in sorted(tags.items())]

        def send(client: MlflowClient) -> None:
            client.log_batch(self._run_id(tracked), tags=items)

        self._enqueue(_Operation(tracked.run_key, "set tags", send))

    def delete_tags(self, tracked: TrackedRun, keys: Sequence[str]) -> None:
        """Remove tags (a run's labels changed); a tag already gone is not an error."""

        def send(client: MlflowClient) -> None:
            existing = client.get_run(self._run_id(tracked)).data.tags
            for key in keys:
                if key in existing:
                    client.delete_tag(self._run_id(tracked), key)

        self._enqueue(_Operation(tracked.run_key, "delete tags", send))

    def log_metrics(self, tracked: TrackedRun, metrics: Mapping[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        items = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        if not items:
            return

        self._enqueue(self._metrics_operation(tracked, items))

    def _metrics_operation(self, tracked: TrackedRun, items: list[Metric]) -> _Operation:
        def send(client: MlflowClient) -> None:
            client.log_batch(self._run_id(tracked), metrics=items)

        return _Operation(tracked.run_key, "log metrics", send, metrics=items, tracked=tracked)

    def log_artifact(self, tracked: TrackedRun, path: Path, artifact_path: str | None = None) -> None:
        def send(client: MlflowClient) -> None:
            client.log_artifact(self._run_id(tracked), str(path), artifact_path)

        self._enqueue(_Operation(tracked.run_key, f"upload {path.name}", send))

    def log_artifacts(self, tracked: TrackedRun, directory: Path, artifact_path: str) -> None:
        def send(client: MlflowClient) -> None:
            client.log_artifacts(self._run_id(tracked), str(directory), artifact_path)

        self._enqueue(_Operation(tracked.run_key, f"upload {artifact_path}/", send))

    def log_onnx_model(self, tracked: TrackedRun, onnx_path: Path) -> None:
        """Log the ONNX policy as an MLflow `onnx` flavour model with a signature and an input example:
        as the run's artifact `onnx_model/` (what the service downloads) and as an MLflow 3 logged
        model (`search_logged_models`, `models:/<model_id>`), linked to the run."""

        def upload(client: MlflowClient) -> None:
            with tempfile.TemporaryDirectory() as scratch:
                model_dir = _save_onnx_model(onnx_path, Path(scratch) / ONNX_ARTIFACT_PATH)
                client.log_artifacts(self._run_id(tracked), str(model_dir), ONNX_ARTIFACT_PATH)

        self._enqueue(_Operation(tracked.run_key, f"upload {ONNX_ARTIFACT_PATH}/", upload))
        model_id: str | None = None

        def log_model(client: MlflowClient) -> None:
            # As the flavour's `log_model` does, through the client with explicit ids: `log_model` reads
            # the process-wide tracking URI and active run, which several trackers and runs would share.
            from mlflow.entities import LoggedModelOutput, LoggedModelStatus
            from mlflow.models import Model

            nonlocal model_id
            run_id = self._run_id(tracked)
            if model_id is None:  # not again when a retry follows a failed upload
                experiment_id = tracked.experiment_id or self._experiment_id()
                created = client.create_logged_model(
                    experiment_id,
                    name=LOGGED_MODEL_NAME,
                    source_run_id=run_id,
                    tags={RUN_TAG: tracked.run_key},
                )
                model_id = created.model_id
            with tempfile.TemporaryDirectory() as scratch:
                description = Model(artifact_path=LOGGED_MODEL_NAME, run_id=run_id, model_id=model_id)
                model_dir = _save_onnx_model(onnx_path, Path(scratch) / LOGGED_MODEL_NAME, description)
                client.log_model_artifacts(model_id, str(model_dir))
            client.finalize_logged_model(model_id, LoggedModelStatus.READY)
            client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])

        self._enqueue(_Operation(tracked.run_key, "log model", log_model))

    def end_run(self, tracked: TrackedRun, status: str) -> None:
        mlflow_status = TERMINAL_STATUS.get(status, "KILLED")

        def send(client: MlflowClient) -> None:
            client.set_terminated(self._run_id(tracked), status=mlflow_status)

        self._enqueue(_Operation(tracked.run_key, f"end run {mlflow_status}", send))

    def close_orphan(self, mlflow_run_id: str, status: str, resumed: Callable[[], bool]) -> None:
        """Terminate an MLflow run left open by a process that died (restart recovery).

        :param resumed: asked just before: True when the run trains again. Resume reopens the same
            MLflow run, possibly on another worker before this queue gets here; it must stay open.
        """

        def send(client: MlflowClient) -> None:
            run = client.get_run(mlflow_run_id)
            if run.info.status == RunStatus.to_string(RunStatus.RUNNING) and not resumed():
                client.set_terminated(mlflow_run_id, status=TERMINAL_STATUS.get(status, "KILLED"))

        self._enqueue(_Operation(mlflow_run_id, "close orphaned run", send))

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
        self._sender.join(timeout=2)

    # --- sender thread -------------------------------------------------------------------------------

    @staticmethod
    def _run_id(tracked: TrackedRun) -> str:
        if tracked.mlflow_run_id is None:
            raise RuntimeError("MLflow run not created yet")
        return tracked.mlflow_run_id

    def _enqueue(self, operation: _Operation) -> None:
        try:
            self._queue.put_nowait(operation)
        except queue.Full:
            log.warning("mlflow_operation_dropped", run=operation.run_key, operation=operation.description)

    def _next_operation(self) -> tuple[_Operation, int]:
        """The next operation and how many queued ones it stands for: queued metric points of the same
        run are merged into one request."""
        operation = self._held or self._queue.get(timeout=0.2)
        self._held = None
        if operation.metrics is None or operation.tracked is None:
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
        return self._metrics_operation(operation.tracked, metrics), merged

    def _send_loop(self) -> None:
        backoff = BACKOFF_START_S
        while not self._stop.is_set():
            try:
                operation, merged = self._next_operation()
            except queue.Empty:
                continue
            while not self._stop.is_set():
                try:
                    operation.apply(self._mlflow())
                except Exception as error:
                    operation.attempts += 1
                    if not self._retry_after_failure(operation, error):
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

    def _retry_after_failure(self, operation: _Operation, error: Exception) -> bool:
        message = describe(error)
        if operation.run_key not in self._degraded_runs:
            self._degraded_runs.add(operation.run_key)
            log.warning(
                "mlflow_degraded", run=operation.run_key, operation=operation.description, error=message
            )
            self._notify(operation.run_key, "degraded", message)
        if _is_transient(error) or operation.attempts < PERMANENT_FAILURE_ATTEMPTS:
            return True
        log.error(
            "mlflow_operation_failed", run=operation.run_key, operation=operation.description, error=message
        )
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
