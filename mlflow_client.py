"""Logging to MLflow: the `Tracker` that training threads log their runs through, never blocking.

Each call becomes an operation on the process's sender thread (`records/mlflow_sender.py`), which
replays them in order through `MlflowClient` with explicit run ids (no fluent "active run" shared
between threads) and keeps them through outages; training carries on. `records/mlflow_runs.py` reads
the runs back; `records/mlflow_models.py` logs the ONNX policy as an MLflow model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import structlog
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from records.mlflow_models import (
    ONNX_ARTIFACT_PATH,
    ModelHandOn,
    create_logged_model,
    log_model_metrics,
    register_logged_model,
    upload_logged_model,
    upload_onnx_artifact,
)
from records.mlflow_runs import MlflowRuns, open_client
from records.mlflow_sender import MlflowSender, Operation, metrics_operation

log = structlog.get_logger(__name__)

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
    :param on_registration: called with (our run id, "registered" | "failed", version, error) once a
        run's model is registered in the model registry, or that was given up.

    `runs` reads the same store; it knows the experiment id as soon as the sender has set it up.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        artifact_dir: Path | None = None,
        on_run_created: Callable[[str, str], None] | None = None,
        on_tracking_status: Callable[[str, str, str | None], None] | None = None,
        on_registration: Callable[[str, str, int | None, str | None], None] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self._on_registration = on_registration
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

    def delete_tags(self, tracked: TrackedRun, keys: Sequence[str]) -> None:
        """Remove tags (a run's labels changed); a tag already gone is not an error."""

        def send(client: MlflowClient) -> None:
            existing = client.get_run(self._run_id(tracked)).data.tags
            for key in keys:
                if key in existing:
                    client.delete_tag(self._run_id(tracked), key)

        self._sender.enqueue(Operation(tracked.run_key, "delete tags", send))

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

    def log_onnx_model(
        self, tracked: TrackedRun, onnx_path: Path, hand_on: ModelHandOn | None = None
    ) -> None:
        """Log the ONNX policy as an MLflow `onnx` flavour model with a signature and an input example:
        as the run's artifact `onnx_model/` (what the service downloads) and as an MLflow 3 logged
        model (`search_logged_models`, `models:/<model_id>`), linked to the run; then `hand_on`'s
        metrics on that logged model, and its registration (reported to `on_registration`)."""
        facts = hand_on or ModelHandOn()

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

        def logged_model() -> str:
            if model_id is None:
                raise RuntimeError("the ONNX model could not be logged to MLflow (see the run's log)")
            return model_id

        if facts.metrics:

            def log_metrics(client: MlflowClient) -> None:
                log_model_metrics(client, self._run_id(tracked), logged_model(), facts.metrics, facts.step)

            self._sender.enqueue(Operation(tracked.run_key, "log model metrics", log_metrics))
        if facts.register_as is not None:
            self._register(tracked, facts.register_as, logged_model)

    def _register(self, tracked: TrackedRun, name: str, logged_model: Callable[[], str]) -> None:
        """Queue the registration of the run's logged model as a new version of `name`; never fails the
        run: an error the sender gives up on is logged and reported as "failed"."""
        served = is_tracking_server(self.tracking_uri)

        def register(client: MlflowClient) -> None:
            version = register_logged_model(client, name, logged_model(), self._run_id(tracked), served)
            log.info("model_registered", experiment_id=tracked.run_key, name=name, version=version)
            self._report_registration(tracked.run_key, "registered", version, None)

        def give_up(error: str) -> None:
            log.error("model_registration_failed", experiment_id=tracked.run_key, name=name, error=error)
            self._report_registration(tracked.run_key, "failed", None, error)

        operation = Operation(tracked.run_key, f"register model {name}", register, on_give_up=give_up)
        self._sender.enqueue(operation)

    def _report_registration(self, run_key: str, status: str, version: int | None, error: str | None) -> None:
        if self._on_registration is None:
            return
        try:
            self._on_registration(run_key, status, version, error)
        except Exception as report_error:  # the database may be down; MLflow holds the truth
            log.warning("registration_not_recorded", experiment_id=run_key, error=str(report_error))

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
