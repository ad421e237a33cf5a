"""Start, train, stop and recover training runs: one background thread per run in this process.

Every fact other workers need goes through `RunStore`; the threads and events kept here are only this
process's handles on the runs it trains, so the service stays correct under `uvicorn --workers N`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import secrets
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import structlog
import torch
from sqlalchemy.exc import SQLAlchemyError
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.vec_env import VecEnv, VecMonitor, is_vecenv_wrapped

import agents
import maze_env
import onnx_export
from db_models import RunStatus, TrainingRun
from mlflow_client import TrackedRun, Tracker
from run_store import NewRun, ProgressSnapshot, RunStore, worker_identity
from schemas import HYPERPARAMETER_MODELS, StartTrainingRequest
from settings import Settings
from training_callbacks import ProgressCallback, StopOnRequestCallback, TrackingCallback

log = structlog.get_logger(__name__)

ONNX_VERIFICATION_OBSERVATIONS = 1000
# Writing a run's final state waits out a database outage: first retry after this, doubling up to the max.
FINAL_STATE_RETRY_FIRST_S = 0.5
FINAL_STATE_RETRY_MAX_S = 10.0
# During shutdown the process is about to exit: wait this long at most, then give up (the next
# start-up marks the run interrupted).
FINAL_STATE_RETRY_AT_SHUTDOWN_S = 10.0
QUEUE_RETRY_AFTER_S = 30
GIL_SWITCH_INTERVAL_S = 0.001
TRAINING_THREAD_NICENESS = 10
CHECKPOINT_DIR = "checkpoints"
ALGORITHM_CLASSES: dict[str, type[PPO] | type[DQN]] = {"PPO": PPO, "DQN": DQN}


class InvalidRequest(ValueError):
    """A request that passed schema validation but cannot run here; answered as 422 naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class ServiceBusy(RuntimeError):
    """The queue is full; answered as 429 with Retry-After."""

    def __init__(self, queued: int, retry_after_s: int) -> None:
        super().__init__(f"{queued} runs are already queued (MAX_QUEUED_RUNS); try again later")
        self.retry_after_s = retry_after_s


class NotResumable(RuntimeError):
    """The run cannot be resumed (wrong state, or nothing saved); answered as 409."""


@dataclasses.dataclass
class _LocalRun:
    """This process's handle on a run it trains."""

    thread: threading.Thread
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    shutting_down: bool = False


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def describe_error(error: BaseException) -> str:
    """A message a user can act on; CUDA out-of-memory says what to lower."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return (
            f"CUDA out of memory: {error}. Lower n_envs, batch_size or buffer_size, "
            'or train on the CPU with "device": "cpu".'
        )
    return f"{type(error).__name__}: {error}"


def effective_hyperparameters(model: BaseAlgorithm, algorithm: str) -> dict[str, Any]:
    """The values training really used, for the record (schedules shown at their starting value)."""
    used: dict[str, Any] = {}
    for name in HYPERPARAMETER_MODELS[algorithm].model_fields:
        value = getattr(model, name, None)
        if callable(value):
            value = value(1.0)
        frequency = getattr(value, "frequency", None)  # DQN's TrainFreq(frequency, unit)
        if frequency is not None:
            value = int(frequency)
        if isinstance(value, int | float | bool | str) or value is None:
            used[name] = value
    used["n_envs"] = model.n_envs
    used["policy"] = type(model.policy).__name__
    used["policy_kwargs"] = repr(getattr(model, "policy_kwargs", {}))
    return used


class TrainingService:
    """Schedules queued runs onto threads of this process, within the global concurrency cap.

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

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover runs orphaned by a dead process on this host, then start scheduling and heartbeats."""
        torch.set_num_threads(self.settings.torch_threads)
        # Training threads run Python between torch calls and hold the GIL; a short switch interval
        # hands it to the event loop sooner, so requests are not stuck behind a training step.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
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
            run.shutting_down = True
            run.stop.set()
        for run in local:
            run.thread.join(timeout=timeout_s)
        for thread in self._background:
            thread.join(timeout=5)

    def local_run_ids(self) -> list[str]:
        with self._lock:
            return list(self._runs)

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
        if latest_checkpoint(self.settings.run_dir(run.id)) is None:
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
            local.stop.set()
        return run

    def _has_free_slot(self) -> bool:
        _, running = self.store.list_runs(status=RunStatus.RUNNING.value, limit=1)
        return running < self.settings.max_concurrent_runs

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
        if request.device == "cuda" and not torch.cuda.is_available():
            raise InvalidRequest("device", "CUDA was requested but this server has no usable CUDA device")
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
                run = self.store.claim_next_queued(self.owner, self.settings.max_concurrent_runs)
            except Exception as error:
                log.warning("claim_failed", error=_first_line(error))
                return
            if run is None:
                return
            self._start_thread(run)

    def _start_thread(self, run: TrainingRun) -> None:
        thread = threading.Thread(target=self._train, args=(run,), name=f"train-{run.id[:8]}", daemon=True)
        with self._lock:
            self._runs[run.id] = _LocalRun(thread=thread)
        thread.start()

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
                log.warning("heartbeat_failed", error=_first_line(error))
                continue
            reachable_since = reachable_since or time.monotonic()
            if time.monotonic() - reachable_since < self.settings.heartbeat_timeout_s:
                continue
            try:
                for run_id in self.store.interrupt_stale(timeout):
                    log.warning("run_interrupted", experiment_id=run_id, reason="heartbeat timeout")
                    self._close_orphaned_tracking(run_id)
            except Exception as error:
                log.warning("stale_check_failed", error=_first_line(error))

    # --- training (on the run's own thread) ------------------------------------------------------------

    def _train(self, run: TrainingRun) -> None:
        lower_thread_priority()
        run_log = log.bind(experiment_id=run.id, algorithm=run.algorithm)
        with self._lock:
            local = self._runs[run.id]
        tracked = self._start_tracking(run)
        env: VecEnv | None = None
        final_status = RunStatus.FAILED
        try:
            device = resolve_device(run.device_requested)
            env = self._make_env(run)
            checkpoint = latest_checkpoint(self.settings.run_dir(run.id))
            if checkpoint is None:
                model = agents.build_model(
                    run.algorithm, env, dict(run.hyperparameters), run.seed, device, run.timesteps_per_episode
                )
            else:
                model = ALGORITHM_CLASSES[run.algorithm].load(checkpoint, env=env, device=device)
            used = effective_hyperparameters(model, run.algorithm)
            self.store.record_setup(run.id, device, used)
            if run.maze_mode == "fixed":
                self.store.record_fixed_maze_seed(run.id, fixed_maze_seed(env))
            if tracked is not None and checkpoint is None:
                self.tracker.log_params(tracked, run_parameters(run, device, used))  # type: ignore[union-attr]
            remaining = max(0, run.total_timesteps - model.num_timesteps)
            run_log.info(
                "run_started", device=device, remaining_timesteps=remaining, resumed=checkpoint is not None
            )
            callbacks = self._callbacks(run, local, tracked)
            model.learn(
                total_timesteps=remaining,
                callback=callbacks,
                reset_num_timesteps=checkpoint is None,
            )
            final_progress = progress_snapshot(callbacks)
            model_path = self._save_model(run.id, model)
            if local.stop.is_set():
                final_status = RunStatus.INTERRUPTED if local.shutting_down else RunStatus.STOPPED
                reason = "the service shut down during training" if local.shutting_down else None
                self._finish(
                    run.id, final_status, error=reason, model_path=model_path, progress=final_progress
                )
                result = None
            else:
                final_status = RunStatus.COMPLETED
                result = self._evaluate(run, model, env)
                self._finish(
                    run.id,
                    final_status,
                    model_path=model_path,
                    eval_success_rate=result.success_rate if result else None,
                    eval_path_efficiency=result.path_efficiency if result else None,
                    progress=final_progress,
                )
            run_log.info("run_finished", status=final_status.value)
            self._log_outcome(tracked, result, Path(model_path), model.num_timesteps)
            if not local.shutting_down:
                self._export_onnx(run, model, env, tracked)
        except Exception as error:
            run_log.exception("run_failed")
            final_status = RunStatus.FAILED
            self._record_failure(run.id, describe_error(error))
        finally:
            if env is not None:
                env.close()
            if tracked is not None:
                self.tracker.end_run(tracked, final_status.value)  # type: ignore[union-attr]
            with self._lock:
                self._runs.pop(run.id, None)
            self._wake.set()  # a slot is free: start the next queued run

    def _callbacks(self, run: TrainingRun, local: _LocalRun, tracked: TrackedRun | None) -> CallbackList:
        progress = ProgressCallback(
            run.timesteps_per_episode,
            self.settings.progress_interval_s,
            self._publisher(run.id),
            maze_episodes=run.maze_episodes,
            maze_successes=run.maze_successes,
        )
        callbacks: list[BaseCallback] = [progress]
        every = self.settings.checkpoint_every_episodes
        if every > 0:
            callbacks.append(
                CheckpointCallback(
                    save_freq=max(1, every * run.timesteps_per_episode // run.n_envs),
                    save_path=str(self.settings.run_dir(run.id) / CHECKPOINT_DIR),
                    name_prefix="checkpoint",
                )
            )
        if tracked is not None and self.tracker is not None:
            tracker = self.tracker
            callbacks.append(
                TrackingCallback(
                    progress,
                    run.timesteps_per_episode,
                    lambda metrics, step: tracker.log_metrics(tracked, metrics, step),
                )
            )
        callbacks.append(StopOnRequestCallback(local.stop, lambda: self._poll_stop_request(run.id)))
        return CallbackList(callbacks)

    def _start_tracking(self, run: TrainingRun) -> TrackedRun | None:
        if self.tracker is None:
            return None
        tags = {"experiment_id": run.id, "algorithm": run.algorithm, "maze_size": str(run.maze_size)}
        return self.tracker.start_run(run.id, f"{run.algorithm}-maze{run.maze_size}-{run.id[:8]}", tags)

    def _log_outcome(
        self, tracked: TrackedRun | None, result: agents.EvalResult | None, model_path: Path, step: int
    ) -> None:
        if tracked is None or self.tracker is None:
            return
        if result is not None:
            metrics = {
                "eval_success_rate": result.success_rate,
                "eval_path_efficiency": result.path_efficiency,
            }
            self.tracker.log_metrics(tracked, metrics, step)
        self.tracker.log_artifact(tracked, model_path, "sb3_model")

    def _export_onnx(
        self, run: TrainingRun, model: BaseAlgorithm, env: VecEnv, tracked: TrackedRun | None
    ) -> None:
        """Export, verify and publish the policy; a failed export is recorded and keeps the SB3 model."""
        self.store.record_onnx(run.id, onnx_status="pending", onnx_error=None)
        out_path = self.settings.run_dir(run.id) / "model.onnx"
        try:
            observations = onnx_export.collect_observations(
                model, env, ONNX_VERIFICATION_OBSERVATIONS, seed=run.seed
            )
            report = onnx_export.export_policy(
                cast(PPO | DQN, model), out_path, onnx_metadata(run, env), observations
            )
        except Exception as error:
            message = str(error) if isinstance(error, onnx_export.OnnxExportError) else describe_error(error)
            log.warning("onnx_export_failed", experiment_id=run.id, error=message)
            self.store.record_onnx(run.id, onnx_status="failed", onnx_error=message)
            return
        self.store.record_onnx(
            run.id,
            onnx_status="exported",
            onnx_size_bytes=report.size_bytes,
            onnx_opset=report.opset,
            onnx_export_seconds=report.export_seconds,
            onnx_parity_passed=report.parity.passed,
        )
        log.info("onnx_exported", experiment_id=run.id, seconds=round(report.export_seconds, 3))
        if tracked is not None and self.tracker is not None:
            self.tracker.log_onnx_model(tracked, out_path)
            self.tracker.log_metrics(
                tracked,
                {
                    "onnx_export_seconds": report.export_seconds,
                    "onnx_action_agreement": report.parity.action_agreement,
                },
                model.num_timesteps,
            )

    def _make_env(self, run: TrainingRun) -> VecEnv:
        env = agents.make_vec_env(run.maze_size, run.maze_mode, run.seed, run.n_envs)
        if not is_vecenv_wrapped(env, VecMonitor):
            env = VecMonitor(env)
        return env

    def _publisher(self, run_id: str) -> Callable[[ProgressSnapshot], None]:
        def publish(snapshot: ProgressSnapshot) -> None:
            try:
                self.store.record_progress(run_id, snapshot)
            except Exception as error:
                # Losing one snapshot is fine; losing the run because the database blinked is not.
                log.warning("progress_not_recorded", experiment_id=run_id, error=str(error))

        return publish

    def _save_model(self, run_id: str, model: BaseAlgorithm) -> str:
        directory = self.settings.run_dir(run_id)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "model.zip"
        model.save(path)
        return str(path)

    def _evaluate(self, run: TrainingRun, model: BaseAlgorithm, env: VecEnv) -> agents.EvalResult | None:
        if run.maze_mode == "fixed":
            seeds = [fixed_maze_seed(env)]
        elif self.settings.eval_episodes > 0:
            seeds = maze_env.eval_maze_seeds(self.settings.eval_episodes)
        else:
            return None
        return agents.evaluate(model, run.maze_size, seeds)

    def _close_orphaned_tracking(self, run_id: str) -> None:
        mlflow_run_id = self.store.get(run_id).mlflow_run_id
        if self.tracker is not None and mlflow_run_id:
            self.tracker.close_orphan(mlflow_run_id, RunStatus.INTERRUPTED.value)

    def _record_failure(self, run_id: str, message: str) -> None:
        try:
            self._finish(run_id, RunStatus.FAILED, error=message)
        except Exception:
            log.exception("failure_not_recorded", experiment_id=run_id)

    def _poll_stop_request(self, run_id: str) -> bool:
        """Did another worker ask this run to stop? While the database is down the answer is "not yet":
        an outage must not crash a training run that needs no database to go on."""
        try:
            return self.store.stop_requested(run_id)
        except SQLAlchemyError as error:
            log.warning("stop_poll_failed", experiment_id=run_id, error=str(error).splitlines()[0])
            return False

    def _finish(self, run_id: str, status: RunStatus, **outcome: Any) -> None:
        """`RunStore.finish`, retried while the database is unreachable.

        A run's outcome (minutes or hours of training) must survive a database restart. The run keeps
        its slot and its heartbeat until the write lands; at shutdown we give up after
        FINAL_STATE_RETRY_AT_SHUTDOWN_S and re-raise.
        """
        delay = FINAL_STATE_RETRY_FIRST_S
        give_up_at: float | None = None
        while True:
            try:
                self.store.finish(run_id, status, **outcome)
                return
            except SQLAlchemyError as error:
                if self._closing.is_set():
                    give_up_at = give_up_at or time.monotonic() + FINAL_STATE_RETRY_AT_SHUTDOWN_S
                    if time.monotonic() >= give_up_at:
                        raise
                log.warning(
                    "final_state_not_recorded_yet",
                    experiment_id=run_id,
                    status=status.value,
                    retry_in_s=delay,
                    error=str(error).splitlines()[0],
                )
            time.sleep(delay)
            delay = min(2 * delay, FINAL_STATE_RETRY_MAX_S)


def progress_snapshot(callbacks: CallbackList) -> ProgressSnapshot:
    """The run's final progress as its ProgressCallback measured it, to be written with the final state."""
    progress = next(callback for callback in callbacks.callbacks if isinstance(callback, ProgressCallback))
    return progress.snapshot()


def lower_thread_priority() -> None:
    """Make the calling (training) thread yield the CPU to the API's threads when both want it."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TRAINING_THREAD_NICENESS)


def _first_line(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest saved model of a run: a periodic checkpoint, or the model saved when it stopped."""
    candidates = [run_dir / "model.zip", *(run_dir / CHECKPOINT_DIR).glob("checkpoint_*_steps.zip")]
    existing = [path for path in candidates if path.is_file()]
    return max(existing, key=lambda path: path.stat().st_mtime_ns) if existing else None


def fixed_maze_seed(env: VecEnv) -> int:
    return int(env.get_attr("maze", [0])[0].seed)


def run_parameters(run: TrainingRun, device: str, used: dict[str, Any]) -> dict[str, Any]:
    """Everything that defines a run, for MLflow's parameters."""
    return {
        **used,
        "algorithm": run.algorithm,
        "total_episodes": run.total_episodes,
        "timesteps_per_episode": run.timesteps_per_episode,
        "total_timesteps": run.total_timesteps,
        "maze_size": run.maze_size,
        "maze_mode": run.maze_mode,
        "seed": run.seed,
        "device": device,
        **library_versions(),
    }


def library_versions() -> dict[str, str]:
    import gymnasium
    import stable_baselines3

    return {
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "stable_baselines3_version": stable_baselines3.__version__,
        "gymnasium_version": gymnasium.__version__,
    }


def onnx_metadata(run: TrainingRun, env: VecEnv) -> dict[str, str]:
    """What a client needs to run the exported model without asking the service anything else."""
    metadata = {
        onnx_export.METADATA_ALGORITHM: run.algorithm,
        onnx_export.METADATA_MAZE_SIZE: str(run.maze_size),
        onnx_export.METADATA_MAZE_MODE: run.maze_mode,
        onnx_export.METADATA_OBSERVATION_ENCODING: maze_env.OBSERVATION_ENCODING,
        onnx_export.METADATA_ACTION_MEANINGS: ",".join(maze_env.ACTIONS),
        onnx_export.METADATA_EXPERIMENT_ID: run.id,
    }
    if run.maze_mode == "fixed":
        metadata[onnx_export.METADATA_MAZE_SEED] = str(fixed_maze_seed(env))
    return metadata


def saved_file(settings: Settings, run: TrainingRun, filename: str = "model.zip") -> Path | None:
    """A file saved for a run (SB3 model, ONNX export), if it exists; the path is built from our own
    id and a constant name, never from user input."""
    path = settings.run_dir(run.id) / filename
    return path if path.is_file() else None
