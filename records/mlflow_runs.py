"""Reading runs back from MLflow: details, metric history, artifacts, the experiment, store health.

The write side (the buffered `mlflow_client.Tracker`) uses this module's `open_client` and the
experiment lookup; nothing hands out an `MlflowClient`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# One call against a dead server must fail in seconds, not retry for minutes: the tracker's sender
# thread does the retrying, and requests must not hang. Users may still override these.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

from mlflow.tracking import MlflowClient

HEALTH_TIMEOUT_S = 2.0
HISTORY_KEYS = ("reward", "success_rate", "eval_success_rate", "loss")
MAX_ARTIFACT_DEPTH = 3


@dataclasses.dataclass(frozen=True)
class RunDetails:
    experiment_id: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]]
    artifacts: list[tuple[str, int | None]]
    artifact_uri: str | None


def open_client(tracking_uri: str) -> MlflowClient:
    """A client on the store; a local store is created or migrated now, under a file lock, because
    several workers starting together would otherwise race to do it."""
    with _store_init_lock(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)
    return client


@contextlib.contextmanager
def _store_init_lock(tracking_uri: str) -> Iterator[None]:
    location = _local_store_dir(tracking_uri)
    if location is None:
        yield
        return
    location.mkdir(parents=True, exist_ok=True)
    with (location / ".mlflow-init.lock").open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _local_store_dir(tracking_uri: str) -> Path | None:
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        return Path(tracking_uri.removeprefix("sqlite:///")).parent
    if parsed.scheme in ("file", ""):
        return Path(parsed.path or tracking_uri)
    return None


def ui_url(
    tracking_uri: str, ui_base: str | None, experiment_id: str | None, run_id: str | None
) -> str | None:
    """Link to a run in the MLflow UI: the server itself, or `MLFLOW_UI_URL` for a local store."""
    base = ui_base or (tracking_uri if tracking_uri.startswith(("http://", "https://")) else None)
    if not base or not experiment_id or not run_id:
        return None
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


class MlflowRuns:
    """Queries on the service's MLflow experiment. Every method but `cached_experiment_id` blocks on
    MLflow (call it off the event loop) and raises when the store cannot be reached.

    :param tracking_uri: MLflow tracking URI (http(s)://, sqlite:///, file: or a plain path).
    :param experiment_name: MLflow experiment holding the runs.
    """

    def __init__(self, tracking_uri: str, experiment_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self._client: MlflowClient | None = None
        self._client_lock = threading.Lock()
        self._experiment_id: str | None = None

    def _mlflow(self) -> MlflowClient:
        with self._client_lock:
            if self._client is None:
                self._client = open_client(self.tracking_uri)
            return self._client

    def experiment_id(self) -> str | None:
        """The experiment's id, None while it does not exist; kept once found."""
        if self._experiment_id is None:
            experiment = self._mlflow().get_experiment_by_name(self.experiment_name)
            if experiment is not None:
                self._experiment_id = str(experiment.experiment_id)
        return self._experiment_id

    def cached_experiment_id(self) -> str | None:
        """The experiment id if already found: for request paths that must not wait on MLflow."""
        return self._experiment_id

    def run_details(self, mlflow_run_id: str) -> RunDetails:
        run = self._mlflow().get_run(mlflow_run_id)
        return RunDetails(
            experiment_id=run.info.experiment_id,
            status=run.info.status,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            history={key: self.metric_history(mlflow_run_id, key) for key in HISTORY_KEYS},
            artifacts=[(a.path, a.file_size) for a in self._walk_artifacts(mlflow_run_id, None)],
            artifact_uri=run.info.artifact_uri,
        )

    def metric_history(self, mlflow_run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged point of one metric."""
        return [(m.step, m.value) for m in self._mlflow().get_metric_history(mlflow_run_id, key)]

    def artifact_paths(self, mlflow_run_id: str, folder: str) -> set[str]:
        """The paths of the artifacts directly in `folder`."""
        return {info.path for info in self._mlflow().list_artifacts(mlflow_run_id, folder)}

    def download_artifact(self, mlflow_run_id: str, artifact_path: str, directory: Path) -> Path:
        """Download one artifact into `directory`; its local path."""
        return Path(self._mlflow().download_artifacts(mlflow_run_id, artifact_path, str(directory)))

    def _walk_artifacts(self, run_id: str, path: str | None, depth: int = 0) -> Iterator[Any]:
        for info in self._mlflow().list_artifacts(run_id, path):
            if info.is_dir and depth < MAX_ARTIFACT_DEPTH:
                yield from self._walk_artifacts(run_id, info.path, depth + 1)
            elif not info.is_dir:
                yield info

    def check_store(self) -> tuple[bool, str]:
        """Is the store usable? A server must answer `/health`; a local store must be writable.

        :returns: (ok, human-readable detail).
        """
        tracking_uri = self.tracking_uri
        if urlparse(tracking_uri).scheme in ("http", "https"):
            url = tracking_uri.rstrip("/") + "/health"
            try:
                with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:
                    return response.status == 200, f"server {tracking_uri} answered {response.status}"
            except (urllib.error.URLError, TimeoutError, OSError) as error:
                return False, f"server {tracking_uri} unreachable: {error}"
        location = _local_store_dir(tracking_uri)
        if location is None:
            return True, f"store {tracking_uri} (not checked)"
        existing = next((p for p in (location, *location.parents) if p.exists()), None)
        if existing is None or not existing.is_dir():
            return False, f"local store {location} has no usable parent directory"
        writable = os.access(existing, os.W_OK)
        return writable, f"local store {location} ({'writable' if writable else 'not writable'})"
