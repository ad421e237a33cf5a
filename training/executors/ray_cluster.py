"""Training runs as tasks on a Ray cluster: the service schedules and watches, the cluster trains.

Each claimed run becomes one Ray actor (no restarts, no retries) that reserves RAY_CPUS_PER_RUN CPUs,
and a GPU when the run asks for CUDA, so the cluster decides where it trains. An actor rather than a
plain task: a second method call can ask the running job to save and end (service shutdown), which
Ray's task cancellation cannot do gracefully. The task runs the same `TrainingJob`
as the other executors; it reaches the control plane only through the database and MLflow, never
through files shared with the service. Ray is imported only here, and only when EXECUTOR=ray.
"""

from __future__ import annotations

import math
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from core.errors import describe
from core.settings import Settings
from mlflow_client import Tracker
from records.files import ARTIFACT_PATHS
from records.store import RunStore
from records.tables import RunStatus, TrainingRun
from training.executors.base import (
    RunEnded,
    SavedModelUnavailable,
    end_abandoned_run,
    has_local_checkpoint,
)
from training.executors.worker import tracker_artifact_dir, train_run
from training.job import JobControl

log = structlog.get_logger(__name__)

CAPACITY_REFRESH_S = 5.0
WATCH_INTERVAL_S = 0.5
WORKER_UPLOAD_FLUSH_S = 60.0
# Ray's switch for "no multi-node clusters" (meant for macOS/Windows): with it off, Ray resolves its own
# addresses to 127.0.0.1 instead of this machine's network address, and no other node can join.
RAY_LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
WORKER_DATA_DIR = Path(tempfile.gettempdir()) / "rl-maze-worker"


class RayExecutor:
    """The service's handle on its runs in a Ray cluster.

    :param settings: service settings (EXECUTOR=ray).
    :param store: run records; crashed tasks are marked failed here.
    :param tracker: closes the MLflow run of a task that died; None when tracking is off.
    :param on_run_ended: called when a task ended, so the scheduler can fill the slot.
    """

    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        tracker: Tracker | None,
        on_run_ended: RunEnded,
    ) -> None:
        self.settings = settings
        self.store = store
        self.tracker = tracker
        self._on_run_ended = on_run_ended
        self._tasks: dict[Any, str] = {}  # ObjectRef of RunTrainer.train → run id
        self._actors: dict[str, Any] = {}  # run id → its RunTrainer actor
        self._cancel_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._capacity = 0
        self._gpus = 0.0
        self._capacity_read_at = -math.inf
        self._watcher: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Join the cluster (or start a private one) without taking over the service's SIGTERM."""
        # Ray's C++ crash handler would catch SIGTERM too, dump a stack trace and kill the process
        # before uvicorn's graceful shutdown (which saves the runs) has run. Read when Ray is imported.
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        address = self.settings.ray_address or None
        if address is None:
            # A private instance never has other nodes: keep all its traffic on loopback (Ray otherwise
            # swaps 127.0.0.1 for the machine's network address). Read when Ray is imported.
            os.environ.setdefault(RAY_LOOPBACK_ONLY_ENV, "0")
        import ray

        handler = signal.getsignal(signal.SIGTERM)
        options: dict[str, Any] = {"address": address, "namespace": "rl-maze", "log_to_driver": False}
        if address is None:
            # A private instance: no dashboard (its Jobs API runs arbitrary code), loopback only.
            options.update(include_dashboard=False, _node_ip_address="127.0.0.1")
        ray.init(**options)
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) != handler
        ):
            signal.signal(signal.SIGTERM, handler)
        self._refresh_capacity(force=True)
        log.info("ray_connected", address=address or "local", capacity=self._capacity, gpus=self._gpus)
        self._watcher = threading.Thread(target=self._watch_loop, name="ray-watcher", daemon=True)
        self._watcher.start()

    def shutdown(self, timeout_s: float) -> None:
        """Ask every run to save and end `interrupted`, wait up to `timeout_s` for them to record that,
        then leave the cluster (Ray ends a departed driver's actors); a run that did not record its
        end in time is marked interrupted here."""
        import ray

        self._closing.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        with self._lock:
            tasks = dict(self._tasks)
            actors = dict(self._actors)
        for actor in actors.values():
            actor.interrupt.remote()
        deadline = time.monotonic() + timeout_s
        pending = set(tasks.values())
        while pending and time.monotonic() < deadline:
            pending = {run_id for run_id in pending if self._still_running(run_id)}
            time.sleep(WATCH_INTERVAL_S if pending else 0)
        for run_id in pending:
            try:
                self.store.finish(
                    run_id, RunStatus.INTERRUPTED, error="the service shut down before the run could save"
                )
            except Exception as error:  # database down: the next start-up marks the run interrupted
                log.warning("ray_run_end_not_recorded", experiment_id=run_id, error=describe(error))
        ray.shutdown()

    def _still_running(self, run_id: str) -> bool:
        try:
            return self.store.get(run_id).status == RunStatus.RUNNING.value
        except Exception:  # database down: keep waiting until the deadline
            return True

    # --- scheduling ------------------------------------------------------------------------------

    def capacity(self) -> int:
        """Runs the cluster can train at once: its CPUs / RAY_CPUS_PER_RUN (re-read every few seconds)."""
        self._refresh_capacity()
        return self._capacity

    def has_gpus(self) -> bool:
        self._refresh_capacity()
        return self._gpus > 0

    def cuda_unavailable(self) -> str | None:
        return None if self.has_gpus() else "the Ray cluster has no GPU"

    def can_resume(self, run: TrainingRun) -> bool:
        """A checkpoint here, or (a Ray worker trained the run) the model it uploaded when it stopped."""
        if has_local_checkpoint(self.settings, run):
            return True
        if self.tracker is None or not run.mlflow_run_id:
            return False
        folder = ARTIFACT_PATHS["model.zip"].rsplit("/", 1)[0]
        try:
            listed = self.tracker.runs.artifact_paths(run.mlflow_run_id, folder)
        except Exception as error:
            raise SavedModelUnavailable(
                f"run {run.id}'s saved model is in MLflow, which is unavailable: {describe(error)}"
            ) from error
        return ARTIFACT_PATHS["model.zip"] in listed

    def _refresh_capacity(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._capacity_read_at < CAPACITY_REFRESH_S:
            return
        import ray

        try:
            resources = ray.cluster_resources()
        except Exception as error:  # the cluster blinked: keep the last known capacity
            log.warning("ray_capacity_unknown", error=f"{type(error).__name__}: {error}")
            return
        self._capacity = int(resources.get("CPU", 0.0) // self.settings.ray_cpus_per_run)
        self._gpus = float(resources.get("GPU", 0.0))
        self._capacity_read_at = time.monotonic()

    def submit(self, run: TrainingRun) -> None:
        try:
            self._start_actor(run)
        except Exception as error:  # e.g. the cluster is unreachable: the run must not stay "running"
            log.exception("ray_submit_failed", experiment_id=run.id)
            self.store.finish(
                run.id,
                RunStatus.FAILED,
                error=f"could not submit to Ray: {describe(error)}",
            )

    def _start_actor(self, run: TrainingRun) -> None:
        import ray

        wants_gpu = run.device_requested == "cuda" or (run.device_requested == "auto" and self.has_gpus())
        actor: Any = (
            ray.remote(RunTrainer)
            .options(
                num_cpus=self.settings.ray_cpus_per_run,
                num_gpus=1 if wants_gpu else 0,
                # A restarted actor would start over on a run the database already counts.
                max_restarts=0,
                max_task_retries=0,
                max_concurrency=2,  # `interrupt` must run while `train` does
            )
            .remote()
        )
        ref = actor.train.remote(worker_settings(self.settings), run.id, artifact_dir(self.settings))
        with self._lock:
            self._tasks[ref] = run.id
            self._actors[run.id] = actor
        log.info("ray_task_submitted", experiment_id=run.id, gpu=wants_gpu)

    def run_ids(self) -> list[str]:
        with self._lock:
            return list(self._tasks.values())

    def request_stop(self, run_id: str) -> None:
        """The task sees the database flag within a second; if it has not ended after the grace
        period (stuck in a long update, or a worker that lost the database), it is cancelled."""
        with self._lock:
            if run_id in self._tasks.values():
                self._cancel_at.setdefault(run_id, time.monotonic() + self.settings.ray_stop_grace_s)

    # --- watching --------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        import ray

        while not self._closing.is_set():
            with self._lock:
                refs = list(self._tasks)
            if not refs:
                self._closing.wait(WATCH_INTERVAL_S)
                continue
            try:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=WATCH_INTERVAL_S)
            except Exception as error:
                log.warning("ray_wait_failed", error=f"{type(error).__name__}: {error}")
                self._closing.wait(WATCH_INTERVAL_S)
                continue
            for ref in ready:
                self._settle(ref)
            self._cancel_overdue()
            if ready:
                self._on_run_ended()

    def _settle(self, ref: Any) -> None:
        """A run's actor returned or died: free its resources; if the run could not write its final
        state (its worker process or node died), we do."""
        import ray
        from ray.exceptions import RayError

        with self._lock:
            run_id = self._tasks.pop(ref)
            killed_for_stop = self._cancel_at.pop(run_id, None) is not None
            actor = self._actors.pop(run_id, None)
        if actor is not None:
            ray.kill(actor)  # its CPUs (and GPU) go back to the cluster now, not when garbage-collected
        try:
            ray.get(ref, timeout=0)
            return
        except RayError as error:
            if killed_for_stop:
                status, reason = (
                    RunStatus.STOPPED,
                    f"did not stop within RAY_STOP_GRACE_S ({self.settings.ray_stop_grace_s:g} s) and was "
                    "killed; training since its last saved model is lost",
                )
            else:
                status = RunStatus.FAILED
                reason = f"the Ray worker training this run died: {describe(error)}"
        self._mark_ended(run_id, status, reason)

    def _mark_ended(self, run_id: str, status: RunStatus, reason: str) -> None:
        if end_abandoned_run(self.store, self.tracker, run_id, status, reason):
            log.warning("ray_run_ended_abnormally", experiment_id=run_id, status=status.value, reason=reason)

    def _cancel_overdue(self) -> None:
        import ray

        now = time.monotonic()
        with self._lock:
            overdue = [
                (run_id, self._actors[run_id])
                for run_id, at in self._cancel_at.items()
                if at < now and run_id in self._actors
            ]
        for run_id, actor in overdue:
            log.warning("ray_run_killed", experiment_id=run_id, reason="stop grace period over")
            ray.kill(actor)


class RunTrainer:
    """The Ray actor that trains one run; `interrupt` (called concurrently) makes it save and end
    `interrupted`, as threads do when the service shuts down."""

    def __init__(self) -> None:
        self.control = JobControl()

    def train(self, settings_values: dict[str, Any], run_id: str, artifacts: str | None) -> str:
        return train_on_worker(settings_values, run_id, artifacts, self.control)

    def interrupt(self) -> None:
        self.control.shutting_down = True
        self.control.stop.set()


def worker_settings(settings: Settings) -> dict[str, Any]:
    """The service's settings for a worker, less its data directory (each worker uses its own) and
    its API key (task arguments are visible to anyone on the cluster, and workers serve no API)."""
    return settings.model_dump(exclude={"data_dir", "api_key"})


def artifact_dir(settings: Settings) -> str | None:
    """`tracker_artifact_dir` as a task argument (a local store only works with a one-machine cluster)."""
    directory = tracker_artifact_dir(settings)
    return str(directory) if directory is not None else None


def train_on_worker(
    settings_values: dict[str, Any], run_id: str, artifacts: str | None, control: JobControl
) -> str:
    """Train one run with the service's settings, in this worker's own data directory."""
    data_dir = Path(os.environ.get("DATA_DIR") or WORKER_DATA_DIR)
    settings = Settings(**settings_values, data_dir=data_dir)
    artifact_dir = Path(artifacts) if artifacts else None
    status = train_run(
        settings, run_id, control, artifact_dir, WORKER_UPLOAD_FLUSH_S, artifacts_must_reach_store=True
    )
    return status.value
