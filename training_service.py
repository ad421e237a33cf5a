"""Start, stop, schedule and recover training runs: the control plane.

Where runs train is the executor's business (`training/executors/`: threads of this process, child
processes, or a Ray cluster, chosen once from EXECUTOR); in every case the job itself is
`training.job.TrainingJob`. Every fact other workers need goes through `RunStore`; the executor's
threads and task handles are only this process's handles on the runs it started, so the service stays
correct under `uvicorn --workers N`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import structlog
import torch
from sqlalchemy.exc import SQLAlchemyError

from agents.hyperparameters import MAX_BATCH_SIZE, budget_violation, default_n_envs, ppo_n_steps
from api.schemas import StartTrainingRequest
from core.errors import InvalidRequest, NotExportable, NotResumable, ServiceBusy, describe
from core.settings import Settings
from mlflow_client import Tracker
from records.admission import NewRun
from records.liveness import owner_is_gone, worker_identity
from records.store import RunStore
from records.tables import RunStatus, TrainingRun, utcnow
from training.executors import Executor, SavedModelUnavailable, make_executor
from training.onnx_publish import export_saved_model

log = structlog.get_logger(__name__)

QUEUE_RETRY_AFTER_S = 30
GIL_SWITCH_INTERVAL_S = 0.001
# A finished run's `pending` export is taken over from its worker only once that worker is gone, or
# silent for this long beyond the heartbeat timeout (an export takes seconds; a remote one may wait
# minutes for its uploads).
EXPORT_TAKEOVER_GRACE_S = 300.0


class TrainingService:
    """Schedules queued runs onto its executor, within the executor's concurrency cap.

    :param settings: service settings.
    :param store: shared run records.
    :param tracker: experiment tracking (MLflow); None disables it.
    """

    def __init__(self, settings: Settings, store: RunStore, tracker: Tracker | None = None) -> None:
        self.settings = settings
        self.store = store
        self.tracker = tracker
        self.owner = worker_identity()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._background: list[threading.Thread] = []
        self.executor: Executor = make_executor(settings, store, tracker, on_run_ended=self._wake.set)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover runs orphaned by a dead process on this host, then start scheduling and heartbeats."""
        torch.set_num_threads(self.settings.torch_threads)
        # Training threads run Python between torch calls and hold the GIL; a short switch interval
        # hands it to the event loop sooner, so requests are not stuck behind a training step.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.executor.start()
        for run_id in self.store.interrupt_dead_local_owners(self.owner):
            log.warning("run_interrupted", experiment_id=run_id, reason="owner process exited")
            self._close_orphaned_tracking(run_id)
        loops = (
            (self._schedule_loop, "scheduler"),
            (self._heartbeat_loop, "heartbeat"),
            (self._export_left_pending, "exports"),
        )
        for target, name in loops:
            thread = threading.Thread(target=target, name=f"training-{name}", daemon=True)
            thread.start()
            self._background.append(thread)
        self._wake.set()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop local runs gracefully (they save their model and end `interrupted`), within `timeout_s`."""
        self._closing.set()
        self._wake.set()
        self.executor.shutdown(timeout_s)
        for thread in self._background:
            thread.join(timeout=5)

    def local_run_ids(self) -> list[str]:
        """Runs this process started and still watches (on its threads, child processes or Ray tasks)."""
        return self.executor.run_ids()

    # --- requests ----------------------------------------------------------------------------------

    def submit(
        self,
        request: StartTrainingRequest,
        idempotency_key: str | None = None,
        sweep_trial: tuple[str, int] | None = None,
    ) -> TrainingRun:
        """Record a new run as queued and start it at once when the cap allows.

        :param idempotency_key: the client's key for this start. A start repeated with the same key and
            body answers the run the first one created; with another body it is refused.
        :param sweep_trial: (sweep id, trial number) when the run is a sweep's trial.
        """
        new_run = self._resolve(request)
        if sweep_trial is not None:
            new_run = dataclasses.replace(new_run, sweep_id=sweep_trial[0], sweep_trial=sweep_trial[1])
        digest = _request_digest(request) if idempotency_key is not None else None
        admission = self.store.admit(
            new_run,
            max_running=self.concurrency_cap(),
            max_queued=self.settings.max_queued_runs,
            idempotency_key=idempotency_key,
            request_digest=digest,
        )
        if admission.run is None:
            raise ServiceBusy(admission.waiting, retry_after_s=QUEUE_RETRY_AFTER_S)
        run = admission.run
        if admission.earlier:
            if run.request_digest != digest:
                raise InvalidRequest(
                    "Idempotency-Key",
                    f"this key already started run {run.id} with another body; use a new key for a new run",
                )
            return self._as_now(run)
        # The run's directory exists from now on: its log (core/run_logs.py) is written there.
        self.settings.run_dir(run.id).mkdir(parents=True, exist_ok=True)
        log.info(
            "run_submitted",
            experiment_id=run.id,
            name=run.name,
            tags=run.tags,
            algorithm=run.algorithm,
            maze_size=run.maze_size,
        )
        self._claim_and_start()
        return self._as_now(run)

    def _as_now(self, run: TrainingRun) -> TrainingRun:
        """The run as recorded now, or as it was created when the database cannot be read: the run
        exists, and an error answer would make the client's retry start it a second time."""
        try:
            return self.store.get(run.id)
        except SQLAlchemyError as error:
            log.warning("run_not_reread", experiment_id=run.id, error=describe(error))
            return run

    def resume(self, run_id: str) -> TrainingRun:
        """Queue an interrupted, stopped or failed run again; it continues from its newest readable
        checkpoint (a run failed by a disk fault goes on once the disk is back)."""
        run = self.store.get(run_id)
        try:
            resumable = self.executor.can_resume(run)
        except SavedModelUnavailable as error:
            raise NotResumable(str(error)) from error
        if not resumable:
            raise NotResumable(
                f"run {run.id} has no checkpoint it can read to resume from (status: {run.status})"
            )
        if not self.store.requeue_for_resume(run.id):
            raise NotResumable(
                f"run {run.id} is {run.status}; only interrupted, stopped or failed runs can be resumed"
            )
        log.info("run_resume_requested", experiment_id=run.id, from_status=run.status)
        self._claim_and_start()
        return self.store.get(run.id)

    def export_again(self, run_id: str) -> TrainingRun:
        """Export a finished run's saved model to ONNX again: after a failed export, or one a dead
        worker left `pending`. A run already exported is answered as it is (nothing is redone)."""
        run = self.store.get(run_id)
        if run.onnx_status == "exported":
            return run
        if not RunStatus(run.status).is_final:
            raise NotExportable(f"run {run.id} is {run.status}: it exports its policy when it ends")
        if not run.model_path or not Path(run.model_path).is_file():
            raise NotExportable(f"run {run.id} has no saved model on this host to export")
        if not self._claim_export(run):
            raise NotExportable(f"the policy of run {run.id} is being exported now; ask again in a minute")
        return export_saved_model(self.settings, self.store, self.tracker, self.store.get(run.id))

    def _claim_export(self, run: TrainingRun) -> bool:
        grace = timedelta(seconds=self.settings.heartbeat_timeout_s + EXPORT_TAKEOVER_GRACE_S)
        gone = owner_is_gone(run.owner, self.owner)
        return self.store.claim_export(run.id, self.owner, utcnow() - grace, owner_gone=gone)

    def _export_left_pending(self) -> None:
        """At start-up, in the background: export again what a dead worker left `pending` (issue 16)."""
        try:
            pending = self.store.pending_exports()
        except SQLAlchemyError as error:
            log.warning("pending_exports_not_read", error=describe(error))
            return
        for run in pending:
            if self._closing.is_set():
                return
            try:
                if run.model_path and Path(run.model_path).is_file() and self._claim_export(run):
                    log.info("onnx_export_taken_over", experiment_id=run.id, from_owner=run.owner)
                    export_saved_model(self.settings, self.store, self.tracker, self.store.get(run.id))
            except Exception as error:  # one run's trouble must not stop the others'
                log.warning("onnx_export_not_taken_over", experiment_id=run.id, error=describe(error))

    def request_stop(self, run_id: str) -> TrainingRun:
        run = self.store.request_stop(run_id)
        self.executor.request_stop(run_id)
        return run

    def concurrency_cap(self) -> int:
        """Runs allowed to train at once: MAX_CONCURRENT_RUNS, or with Ray the cluster's capacity."""
        return self.executor.capacity()

    def check(self, request: StartTrainingRequest) -> None:
        """Raise `InvalidRequest` (naming the field) when this server cannot run `request`."""
        self._resolve(request)

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
        if request.device == "cuda" and (why_not := self.executor.cuda_unavailable()) is not None:
            raise InvalidRequest("device", f"CUDA was requested but {why_not}")
        n_envs = request.n_envs or default_n_envs(request.algorithm)
        if (
            request.algorithm == "PPO"
            and ppo_n_steps(request.hyperparameters, n_envs, request.timesteps_per_episode) < 2
        ):
            raise InvalidRequest(
                "timesteps_per_episode",
                f"must be at least 2 × n_envs (= {2 * n_envs}) for PPO, whose rollout is "
                f"timesteps_per_episode / n_envs steps per environment",
            )
        # A minibatch too large for a CPU is allowed on CUDA (asked only then: Ray asks its cluster).
        large_batch = int(request.hyperparameters.get("batch_size") or 0) > MAX_BATCH_SIZE
        gpu = large_batch and request.device != "cpu" and self.executor.cuda_unavailable() is None
        violation = budget_violation(
            request.algorithm,
            request.maze_size,
            n_envs,
            request.hyperparameters,
            request.timesteps_per_episode,
            request.total_timesteps,
            gpu=gpu,
        )
        if violation is not None:
            raise InvalidRequest(f"hyperparameters.{violation.key}", violation.message)
        eval_episodes = request.eval_episodes or self.settings.eval_episodes
        if request.target_success_rate is not None and request.maze_mode == "random" and eval_episodes == 0:
            raise InvalidRequest(
                "eval_episodes", "a target_success_rate needs held-out evaluation: set eval_episodes ≥ 1"
            )
        if request.register_as is not None and not self.settings.mlflow_enabled:
            raise InvalidRequest(
                "register_as",
                "needs MLflow's model registry, which is off on this server (MLFLOW_ENABLED=false)",
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
            target_success_rate=request.target_success_rate,
            eval_every_episodes=request.eval_every_episodes,
            eval_episodes=eval_episodes,
            patience=request.patience,
            max_evals_without_improvement=request.max_evals_without_improvement,
            policy=request.policy,
            name=request.name,
            tags=request.tags,
            notes=request.notes,
            notify_url=request.notify_url,
            notify_state="pending" if request.notify_url else None,
            register_as=request.register_as,
            registry_status="pending" if request.register_as else None,
        )

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
            self.executor.submit(run)

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

    def _close_orphaned_tracking(self, run_id: str) -> None:
        mlflow_run_id = self.store.get(run_id).mlflow_run_id
        if self.tracker is not None and mlflow_run_id:
            self.tracker.close_orphan(
                mlflow_run_id, RunStatus.INTERRUPTED.value, lambda: self.store.is_active(run_id)
            )


def _request_digest(request: StartTrainingRequest) -> str:
    """Equal for two bodies that ask for the same run, whatever their key order or omitted defaults."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
