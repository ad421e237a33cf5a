"""Start, stop, schedule and recover training runs: the control plane.

Runs train on a background thread of this process (EXECUTOR=thread, the default), in a child process
that such a thread starts and watches (EXECUTOR=process, `training_process.py`), or as tasks on a Ray
cluster (EXECUTOR=ray, `ray_executor.py`); in every case the job itself is `training_job.TrainingJob`.
Every fact other workers need goes through `RunStore`; the threads, events and task handles kept here
are only this process's handles on the runs it started, so the service stays correct under
`uvicorn --workers N`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import sys
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
import torch

import agents
from core.errors import InvalidRequest, NotResumable, ServiceBusy, describe
from db_models import RunStatus, TrainingRun
from mlflow_client import Tracker
from model_files import ARTIFACT_PATHS
from run_store import NewRun, RunStore, worker_identity
from schemas import StartTrainingRequest
from settings import Settings
from training_job import JobControl, TrainingJob, latest_checkpoint
from training_process import start_fork_server, train_in_child_process

if TYPE_CHECKING:
    from ray_executor import RayExecutor

log = structlog.get_logger(__name__)

QUEUE_RETRY_AFTER_S = 30
GIL_SWITCH_INTERVAL_S = 0.001
TRAINING_THREAD_NICENESS = 10


@dataclasses.dataclass
class _LocalRun:
    """This process's handle on a run it trains on a thread."""

    thread: threading.Thread
    control: JobControl = dataclasses.field(default_factory=JobControl)


class TrainingService:
    """Schedules queued runs onto threads of this process or a Ray cluster, within the concurrency cap.

    :param settings: service settings.
    :param store: shared run records.
    :param tracker: experiment tracking (MLflow); None disables it.
    """

    def __init__(self, settings: Settings, store: RunStore, tracker: Tracker | None = None) -> None:
        self.settings = settings
        self.store = store
        self.tracker = tracker
        self.owner = worker_identity()
        self._runs: dict[str, _LocalRun] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._background: list[threading.Thread] = []
        self._ray: RayExecutor | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover runs orphaned by a dead process on this host, then start scheduling and heartbeats."""
        torch.set_num_threads(self.settings.torch_threads)
        # Training threads run Python between torch calls and hold the GIL; a short switch interval
        # hands it to the event loop sooner, so requests are not stuck behind a training step.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        if self.settings.executor == "ray":
            from ray_executor import RayExecutor  # only now: the thread executor never imports Ray

            self._ray = RayExecutor(self.settings, self.store, self.tracker, on_run_ended=self._wake.set)
            self._ray.connect()
        if self.settings.executor == "process":
            threading.Thread(target=start_fork_server, name="fork-server-start", daemon=True).start()
        for run_id in self.store.interrupt_dead_local_owners(self.owner):
            log.warning("run_interrupted", experiment_id=run_id, reason="owner process exited")
            self._close_orphaned_tracking(run_id)
        for target, name in ((self._schedule_loop, "scheduler"), (self._heartbeat_loop, "heartbeat")):
            thread = threading.Thread(target=target, name=f"training-{name}", daemon=True)
            thread.start()
            self._background.append(thread)
        self._wake.set()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop local runs gracefully (they save their model and end `interrupted`), within `timeout_s`."""
        self._closing.set()
        self._wake.set()
        with self._lock:
            local = list(self._runs.values())
        for run in local:
            run.control.shutting_down = True
            run.control.stop.set()
        if self._ray is not None:
            self._ray.shutdown(timeout_s)
        for run in local:
            run.thread.join(timeout=timeout_s)
        for thread in self._background:
            thread.join(timeout=5)

    def local_run_ids(self) -> list[str]:
        """Runs this process started and still watches: its threads, or its tasks on the Ray cluster."""
        with self._lock:
            ids = list(self._runs)
        return ids + (self._ray.run_ids() if self._ray is not None else [])

    # --- requests ----------------------------------------------------------------------------------

    def submit(self, request: StartTrainingRequest) -> TrainingRun:
        """Record a new run as queued and start it at once when the cap allows."""
        new_run = self._resolve(request)
        _, queued = self.store.list_runs(status=RunStatus.QUEUED.value, limit=1)
        if queued >= self.settings.max_queued_runs and not self._has_free_slot():
            raise ServiceBusy(queued, retry_after_s=QUEUE_RETRY_AFTER_S)
        run = self.store.create(new_run)
        log.info("run_submitted", experiment_id=run.id, algorithm=run.algorithm, maze_size=run.maze_size)
        self._claim_and_start()
        return self.store.get(run.id)

    def resume(self, run_id: str) -> TrainingRun:
        """Queue an interrupted or stopped run again; it continues from its newest checkpoint."""
        run = self.store.get(run_id)
        if not self._has_checkpoint(run):
            raise NotResumable(f"run {run.id} has no checkpoint to resume from (status: {run.status})")
        if not self.store.requeue_for_resume(run.id):
            raise NotResumable(
                f"run {run.id} is {run.status}; only interrupted or stopped runs can be resumed"
            )
        log.info("run_resume_requested", experiment_id=run.id, from_status=run.status)
        self._claim_and_start()
        return self.store.get(run.id)

    def request_stop(self, run_id: str) -> TrainingRun:
        run = self.store.request_stop(run_id)
        with self._lock:
            local = self._runs.get(run_id)
        if local is not None:
            local.control.stop.set()
        if self._ray is not None:
            self._ray.request_stop(run_id)
        return run

    def _has_checkpoint(self, run: TrainingRun) -> bool:
        """Something to resume from: a checkpoint here, or (a Ray worker trained it) the model it
        uploaded when it stopped."""
        if latest_checkpoint(self.settings.run_dir(run.id)) is not None:
            return True
        if self._ray is None or self.tracker is None or not run.mlflow_run_id:
            return False
        folder = ARTIFACT_PATHS["model.zip"].rsplit("/", 1)[0]
        try:
            listed = self.tracker.runs.artifact_paths(run.mlflow_run_id, folder)
        except Exception as error:
            raise NotResumable(
                f"run {run.id}'s saved model is in MLflow, which is unavailable: {describe(error)}"
            ) from error
        return ARTIFACT_PATHS["model.zip"] in listed

    def concurrency_cap(self) -> int:
        """Runs allowed to train at once: MAX_CONCURRENT_RUNS, or with Ray the cluster's capacity."""
        return self._ray.capacity() if self._ray is not None else self.settings.max_concurrent_runs

    def _has_free_slot(self) -> bool:
        _, running = self.store.list_runs(status=RunStatus.RUNNING.value, limit=1)
        return running < self.concurrency_cap()

    def _resolve(self, request: StartTrainingRequest) -> NewRun:
        if request.maze_size > self.settings.max_maze_size:
            raise InvalidRequest(
                "maze_size", f"must be at most {self.settings.max_maze_size} on this server (MAX_MAZE_SIZE)"
            )
        if request.total_timesteps > self.settings.max_total_timesteps:
            raise InvalidRequest(
                "total_episodes",
                f"total_episodes × timesteps_per_episode = {request.total_timesteps} exceeds this server's "
                f"limit of {self.settings.max_total_timesteps} steps (MAX_TOTAL_TIMESTEPS)",
            )
        if request.device == "cuda" and not self._cuda_available():
            where = (
                "the Ray cluster has no GPU"
                if self._ray is not None
                else "this server has no usable CUDA device"
            )
            raise InvalidRequest("device", f"CUDA was requested but {where}")
        n_envs = request.n_envs or agents.default_n_envs(request.algorithm)
        ppo_rollout_derived = request.algorithm == "PPO" and "n_steps" not in request.hyperparameters
        if ppo_rollout_derived and request.timesteps_per_episode < 2 * n_envs:
            raise InvalidRequest(
                "timesteps_per_episode",
                f"must be at least 2 × n_envs (= {2 * n_envs}) for PPO, whose rollout is "
                f"timesteps_per_episode / n_envs steps per environment",
            )
        return NewRun(
            algorithm=request.algorithm,
            total_episodes=request.total_episodes,
            timesteps_per_episode=request.timesteps_per_episode,
            maze_size=request.maze_size,
            maze_mode=request.maze_mode,
            seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
            n_envs=n_envs,
            device_requested=request.device,
            hyperparameters=request.hyperparameters,
        )

    def _cuda_available(self) -> bool:
        return self._ray.has_gpus() if self._ray is not None else torch.cuda.is_available()

    # --- scheduling --------------------------------------------------------------------------------

    def _schedule_loop(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if not self._closing.is_set():
                self._claim_and_start()

    def _claim_and_start(self) -> None:
        while not self._closing.is_set():
            try:
                run = self.store.claim_next_queued(self.owner, self.concurrency_cap())
            except Exception as error:
                log.warning("claim_failed", error=describe(error))
                return
            if run is None:
                return
            if self._ray is not None:
                self._start_on_cluster(run)
            else:
                self._start_thread(run)

    def _start_thread(self, run: TrainingRun) -> None:
        thread = threading.Thread(target=self._train, args=(run,), name=f"train-{run.id[:8]}", daemon=True)
        with self._lock:
            self._runs[run.id] = _LocalRun(thread=thread)
        thread.start()

    def _start_on_cluster(self, run: TrainingRun) -> None:
        assert self._ray is not None
        try:
            self._ray.submit(run)
        except Exception as error:  # e.g. the cluster is unreachable: the run must not stay "running"
            log.exception("ray_submit_failed", experiment_id=run.id)
            self.store.finish(run.id, RunStatus.FAILED, error=f"could not submit to Ray: {describe(error)}")

    def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval_s
        timeout = timedelta(seconds=self.settings.heartbeat_timeout_s)
        # After a database outage every worker's heartbeats lapsed together: judge other workers only
        # once they have had a full timeout to write theirs again.
        reachable_since: float | None = time.monotonic()
        while not self._closing.wait(interval):
            try:
                self.store.heartbeat(self.owner, self.local_run_ids())
            except Exception as error:
                reachable_since = None
                log.warning("heartbeat_failed", error=describe(error))
                continue
            reachable_since = reachable_since or time.monotonic()
            if time.monotonic() - reachable_since < self.settings.heartbeat_timeout_s:
                continue
            try:
                for run_id in self.store.interrupt_stale(timeout):
                    log.warning("run_interrupted", experiment_id=run_id, reason="heartbeat timeout")
                    self._close_orphaned_tracking(run_id)
            except Exception as error:
                log.warning("stale_check_failed", error=describe(error))

    # --- training (on the run's own thread) ------------------------------------------------------------

    def _train(self, run: TrainingRun) -> None:
        lower_thread_priority()  # process executor: the child lowers its own
        with self._lock:
            local = self._runs[run.id]
        try:
            if self.settings.executor == "process":
                train_in_child_process(self.settings, self.store, self.tracker, run, local.control)
            else:
                TrainingJob(
                    self.settings, self.store, self.tracker, run, local.control, self._closing
                ).execute()
        except Exception:  # only the process executor's hosting can raise (the job records its errors)
            log.exception("run_hosting_failed", experiment_id=run.id)
            with contextlib.suppress(Exception):
                self.store.finish(run.id, RunStatus.FAILED, error="could not start the training process")
        finally:
            with self._lock:
                self._runs.pop(run.id, None)
            self._wake.set()  # a slot is free: start the next queued run

    def _close_orphaned_tracking(self, run_id: str) -> None:
        mlflow_run_id = self.store.get(run_id).mlflow_run_id
        if self.tracker is not None and mlflow_run_id:
            self.tracker.close_orphan(
                mlflow_run_id, RunStatus.INTERRUPTED.value, lambda: self.store.is_active(run_id)
            )


def lower_thread_priority() -> None:
    """Make the calling (training) thread yield the CPU to the API's threads when both want it."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TRAINING_THREAD_NICENESS)
