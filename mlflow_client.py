"""Logging to MLflow: the `Tracker` that training threads log their runs through, never blocking.

Each call becomes an operation on the process's sender thread (`records/mlflow_sender.py`), which
replays them in order through `MlflowClient` with explicit run ids (no fluent "active run" shared
between threads) and keeps them through outages; training carries on. `records/mlflow_runs.py` reads
the runs back; `records/mlflow_models.py` logs the ONNX policy as an MLflow model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from records.mlflow_models import (
    ONNX_ARTIFACT_PATH,
    create_logged_model,
    upload_logged_model,
    upload_onnx_artifact,
)
from records.mlflow_runs import MlflowRuns, open_client
from records.mlflow_sender import MlflowSender, Operation, metrics_operation

MAX_PARAM_LENGTH = 500
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
        self._client: MlflowClient | None = None  # the sender thread's; opened on its first operation
        self.runs = MlflowRuns(tracking_uri, experiment_name)
        self._sender = MlflowSender(self._mlflow, on_tracking_status)

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

        self._sender.enqueue(Operation("service", "prepare experiment", prepare))

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

        self._sender.enqueue(Operation(run_key, "create run", create))
        return tracked

    def log_params(self, tracked: TrackedRun, params: Mapping[str, Any]) -> None:
        items = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in sorted(params.items())]

        def send(client: MlflowClient) -> None:
            client.log_batch(self._run_id(tracked), params=items)

        self._sender.enqueue(Operation(tracked.run_key, "log params", send))

    def set_tags(self, tracked: TrackedRun, tags: Mapping[str, str]) -> None:
        items = [RunTag(key, value) for key, value in sorted(tags.items())]

        def send(client: MlflowClient) -> None:
            client.log_batch(self._run_id(tracked), tags=items)

        self._sender.enqueue(Operation(tracked.run_key, "set tags", send))

    def log_metrics(self, tracked: TrackedRun, metrics: Mapping[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        items = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        if not items:
            return

        def send(client: MlflowClient, points: list[Metric]) -> None:
            client.log_batch(self._run_id(tracked), metrics=points)

        self._sender.enqueue(metrics_operation(tracked.run_key, send, items))

    def log_artifact(self, tracked: TrackedRun, path: Path, artifact_path: str | None = None) -> None:
        def send(client: MlflowClient) -> None:
            client.log_artifact(self._run_id(tracked), str(path), artifact_path)

        self._sender.enqueue(Operation(tracked.run_key, f"upload {path.name}", send))

    def log_artifacts(self, tracked: TrackedRun, directory: Path, artifact_path: str) -> None:
        def send(client: MlflowClient) -> None:
            client.log_artifacts(self._run_id(tracked), str(directory), artifact_path)

        self._sender.enqueue(Operation(tracked.run_key, f"upload {artifact_path}/", send))

    def log_onnx_model(self, tracked: TrackedRun, onnx_path: Path) -> None:
        """Log the ONNX policy as an MLflow `onnx` flavour model with a signature and an input example:
        as the run's artifact `onnx_model/` (what the service downloads) and as an MLflow 3 logged
        model (`search_logged_models`, `models:/<model_id>`), linked to the run."""

        def upload(client: MlflowClient) -> None:
            upload_onnx_artifact(client, self._run_id(tracked), onnx_path)

        self._sender.enqueue(Operation(tracked.run_key, f"upload {ONNX_ARTIFACT_PATH}/", upload))
        model_id: str | None = None

        def log_model(client: MlflowClient) -> None:
            nonlocal model_id
            run_id = self._run_id(tracked)
            if model_id is None:  # not again when a retry follows a failed upload
                experiment_id = tracked.experiment_id or self._experiment_id()
                model_id = create_logged_model(client, experiment_id, run_id, {RUN_TAG: tracked.run_key})
            upload_logged_model(client, onnx_path, run_id, model_id)

        self._sender.enqueue(Operation(tracked.run_key, "log model", log_model))

    def end_run(self, tracked: TrackedRun, status: str) -> None:
        mlflow_status = TERMINAL_STATUS.get(status, "KILLED")

        def send(client: MlflowClient) -> None:
            client.set_terminated(self._run_id(tracked), status=mlflow_status)

        self._sender.enqueue(Operation(tracked.run_key, f"end run {mlflow_status}", send))

    def close_orphan(self, mlflow_run_id: str, status: str, resumed: Callable[[], bool]) -> None:
        """Terminate an MLflow run left open by a process that died (restart recovery).

        :param resumed: asked just before: True when the run trains again. Resume reopens the same
            MLflow run, possibly on another worker before this queue gets here; it must stay open.
        """

        def send(client: MlflowClient) -> None:
            run = client.get_run(mlflow_run_id)
            if run.info.status == RunStatus.to_string(RunStatus.RUNNING) and not resumed():
                client.set_terminated(mlflow_run_id, status=TERMINAL_STATUS.get(status, "KILLED"))

        self._sender.enqueue(Operation(mlflow_run_id, "close orphaned run", send))

    def pending_operations(self) -> int:
        """Operations queued (or being sent) and not yet done: the backlog while MLflow is slow or down."""
        return self._sender.pending_operations()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued so far was sent (or `timeout_s` passed)."""
        return self._sender.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._sender.close(timeout_s)

    @staticmethod
    def _run_id(tracked: TrackedRun) -> str:
        if tracked.mlflow_run_id is None:
            raise RuntimeError("MLflow run not created yet")
        return tracked.mlflow_run_id
