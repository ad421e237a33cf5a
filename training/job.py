"""One run's whole job: build the env and model, train with progress/tracking/evaluation/stop callbacks,
keep the best and the last model, record the outcome and export ONNX.

The same code runs on a thread of the service, in a child process of it, or inside a Ray task on
another machine (the executors in `training/executors/`): it needs only Settings, a RunStore and a
Tracker, and talks to the control plane only through them (the database for progress, stop requests
and the final state; MLflow for metrics and files).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import torch
from sqlalchemy.exc import SQLAlchemyError
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.vec_env import VecEnv, VecMonitor, is_vecenv_wrapped

from agents.building import build_model, load_model, make_vec_env
from agents.evaluation import EvaluationStopped
from agents.hyperparameters import effective_hyperparameters
from core.errors import describe
from core.settings import Settings
from mlflow_client import Tracker
from records.files import LAST_MODEL_FILE, keep_best_model
from records.store import EvaluationState, ProgressSnapshot, RunStore
from records.tables import RunStatus, StopReason, TrainingRun, run_policy
from sweeps.pruning import trial_pruning
from training.callbacks import final_progress, run_callbacks
from training.checkpoints import fetch_last_model, load_newest_readable
from training.evaluation_callback import EvaluationCallback
from training.job_tracking import JobTracking
from training.onnx_publish import ONNX_FILE, export_error, export_run_policy, exported_fields, model_hand_on
from training.record_writes import write_until_recorded
from training.run_metadata import fixed_maze_seed, run_parameters
from training.stopping import StopSignal, TrainingStopped, stop_between_gradient_steps

log = structlog.get_logger(__name__)


@dataclasses.dataclass
class JobControl:
    """What the process hosting a job uses to end it early.

    :param stop: set to stop at the next step (the model is saved).
    :param shutting_down: set with `stop` when the host is going away: the run ends `interrupted`.
    """

    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    shutting_down: bool = False


class TrainingJob:
    """Trains one claimed run to its final state.

    :param settings: settings of the process running the job (its DATA_DIR is its scratch space).
    :param store: run records (progress, stop requests, final state).
    :param tracker: MLflow; None disables tracking.
    :param run: the run, already claimed as `running`.
    :param control: early-stop handle of the hosting process.
    :param closing: set when the hosting process shuts down (final-state retries then give up).
    :param artifacts_must_reach_store: the service cannot read this process's files (remote worker):
        wait for model uploads before reporting them, and take a resume checkpoint from the store.
    """

    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        tracker: Tracker | None,
        run: TrainingRun,
        control: JobControl,
        closing: threading.Event | None = None,
        artifacts_must_reach_store: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.tracker = tracker
        self.run = run
        self.control = control
        self.closing = closing or threading.Event()
        self.remote = artifacts_must_reach_store
        self.log = log.bind(experiment_id=run.id, algorithm=run.algorithm)

    def execute(self) -> RunStatus:
        """Train, keep the best model, export; every error ends the run `failed` with its message."""
        run = self.run
        tracking = JobTracking(self.tracker, run, self.remote, self.log)
        env: VecEnv | None = None
        final_status = RunStatus.FAILED
        try:
            device = _resolve_device(run.device_requested)
            env = self._make_env()
            resumed = self._load_checkpoint(env, device)
            checkpoint = resumed[1] if resumed else None
            if resumed is None:
                model = build_model(
                    run.algorithm,
                    env,
                    dict(run.hyperparameters),
                    run.seed,
                    device,
                    run.timesteps_per_episode,
                    policy=run_policy(run),
                )
            else:
                model = resumed[0]
            signal = StopSignal(self.control.stop, self._poll_stop_request)
            stop_between_gradient_steps(model, signal)
            used = effective_hyperparameters(model, run.algorithm)
            self._write("set-up", lambda: self.store.record_setup(run.id, device, used))
            if run.maze_mode == "fixed":
                maze_seed = fixed_maze_seed(env)
                self._write("maze seed", lambda: self.store.record_fixed_maze_seed(run.id, maze_seed))
            if checkpoint is None:
                tracking.log_params(run_parameters(run, device, used))
            remaining = max(0, run.total_timesteps - model.num_timesteps)
            self.log.info(
                "run_started", device=device, remaining_timesteps=remaining, resumed=checkpoint is not None
            )
            evaluation = EvaluationCallback.for_run(
                run,
                self.settings,
                env,
                signal.is_set,
                lambda state: self._record_evaluation(state, tracking),
                extra_rule=trial_pruning(run, self.settings),  # None unless the run is a sweep's trial
            )
            log_metrics = tracking.log_metrics if tracking.tracked is not None else None
            callbacks = run_callbacks(run, self.settings, self._publish, log_metrics, evaluation, signal)
            self._train(model, callbacks, remaining, checkpoint is None, evaluation)
            final_status = self._conclude(model, env, tracking, final_progress(callbacks), evaluation)
        except Exception as error:
            self.log.exception("run_failed")
            final_status = RunStatus.FAILED
            self._record_failure(describe_error(error))
        finally:
            if env is not None:
                env.close()
            tracking.end(final_status)
        return final_status

    def _train(
        self,
        model: BaseAlgorithm,
        callbacks: CallbackList,
        remaining: int,
        fresh: bool,
        evaluation: EvaluationCallback | None,
    ) -> None:
        """Learn the remaining budget, then evaluate the last model; a stop ends either at once."""
        try:
            model.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=fresh)
            if evaluation is not None and evaluation.stop_reason is None and not self.control.stop.is_set():
                evaluation.evaluate_final()
        except (TrainingStopped, EvaluationStopped) as stopped:
            self.log.info("run_stop_honoured", where=str(stopped))
            callbacks.on_training_end()  # SB3 skips it when learn() raises: publish the last progress

    def _conclude(
        self,
        model: BaseAlgorithm,
        env: VecEnv,
        tracking: JobTracking,
        progress: ProgressSnapshot,
        evaluation: EvaluationCallback | None,
    ) -> RunStatus:
        """Keep the best and the last model, then record and publish a run whose training ended."""
        if self.control.stop.is_set():
            shutting_down = self.control.shutting_down
            final_status = RunStatus.INTERRUPTED if shutting_down else RunStatus.STOPPED
            stop_reason = StopReason.INTERRUPTED if shutting_down else StopReason.STOPPED
            reason = "the service shut down during training" if shutting_down else None
        else:
            final_status, reason = RunStatus.COMPLETED, None
            stop_reason = (evaluation.stop_reason if evaluation else None) or StopReason.BUDGET_EXHAUSTED
        best = evaluation.state if evaluation else None
        model_path = self._keep_models(model, evaluation is None or evaluation.last_is_best)
        tracking.log_outcome(model_path, stop_reason)
        export = not self.control.shutting_down
        self._finish(
            final_status,
            error=reason,
            model_path=str(model_path),
            eval_success_rate=best.best_eval_success_rate if best else None,
            eval_path_efficiency=best.best_eval_path_efficiency if best else None,
            progress=progress,
            onnx_pending=export,
            stop_reason=stop_reason.value,
        )
        self.log.info("run_finished", status=final_status.value, stop_reason=stop_reason.value)
        if export:
            kept_is_last = not (model_path.parent / LAST_MODEL_FILE).is_file()
            kept = (
                model if kept_is_last else load_model(self.run.algorithm, model_path, None, model.device.type)
            )
            self._export_onnx(kept, env, tracking, best)
        return final_status

    def _keep_models(self, model: BaseAlgorithm, last_is_best: bool) -> Path:
        """Save the last model and make `model.zip` the best one (see `keep_best_model`)."""
        directory = self.settings.run_dir(self.run.id)
        directory.mkdir(parents=True, exist_ok=True)
        model.save(directory / LAST_MODEL_FILE)
        return keep_best_model(directory, last_is_best)

    def _load_checkpoint(self, env: VecEnv, device: str) -> tuple[BaseAlgorithm, Path] | None:
        """The newest saved model here that loads (see `load_newest_readable`), else for a remote job
        the last model the run uploaded; None: nothing saved, train from scratch."""
        run_dir = self.settings.run_dir(self.run.id)
        local = load_newest_readable(self.run.algorithm, run_dir, env, device, self.run.id)
        if local is not None or not self.remote or self.tracker is None or self.run.mlflow_run_id is None:
            return local
        fetched = fetch_last_model(self.tracker.runs, self.run.mlflow_run_id, run_dir)
        return None if fetched is None else (load_model(self.run.algorithm, fetched, env, device), fetched)

    def _record_evaluation(self, state: EvaluationState, tracking: JobTracking) -> None:
        try:
            self.store.record_evaluation(self.run.id, state)
        except Exception as error:
            # As for progress: the next evaluation writes it again, and the final state carries the best.
            self.log.warning("evaluation_not_recorded", error=str(error))
        metrics = {
            "eval_success_rate": state.eval_success_rate,
            "eval_path_efficiency": state.eval_path_efficiency,
        }
        tracking.log_metrics(metrics, state.eval_timesteps)

    def _export_onnx(
        self, model: BaseAlgorithm, env: VecEnv, tracking: JobTracking, best: EvaluationState | None
    ) -> None:
        """Export, verify and publish the policy; a failed export is recorded and keeps the SB3 model.

        `_finish` has already marked the export pending, with the run's final state.
        """
        run = self.run
        out_path = self.settings.run_dir(run.id) / ONNX_FILE
        try:
            report = export_run_policy(model, env, run, out_path)
        except Exception as error:
            message = export_error(error)
            self.log.warning("onnx_export_failed", error=message)
            self._write(
                "onnx", lambda: self.store.record_onnx(run.id, onnx_status="failed", onnx_error=message)
            )
            return
        tracking.log_onnx(out_path, report, model.num_timesteps, model_hand_on(run, best))
        self._write("onnx", lambda: self.store.record_onnx(run.id, **exported_fields(report)))
        self.log.info("onnx_exported", seconds=round(report.export_seconds, 3))

    def _make_env(self) -> VecEnv:
        run = self.run
        env = make_vec_env(run.maze_size, run.maze_mode, run.seed, run.n_envs)
        if not is_vecenv_wrapped(env, VecMonitor):
            env = VecMonitor(env)
        return env

    def _publish(self, snapshot: ProgressSnapshot) -> None:
        try:
            self.store.record_progress(self.run.id, snapshot)
        except Exception as error:
            # Losing one snapshot is fine; losing the run because the database blinked is not.
            self.log.warning("progress_not_recorded", error=str(error))

    def _record_failure(self, message: str) -> None:
        try:
            self._finish(RunStatus.FAILED, error=message, stop_reason=StopReason.FAILED.value)
        except Exception:
            self.log.exception("failure_not_recorded")

    def _poll_stop_request(self) -> bool:
        """Did another worker ask this run to stop? While the database is down the answer is "not yet":
        an outage must not crash a training run that needs no database to go on."""
        try:
            return self.store.stop_requested(self.run.id)
        except SQLAlchemyError as error:
            self.log.warning("stop_poll_failed", error=describe(error))
            return False

    def _finish(self, status: RunStatus, **outcome: Any) -> None:
        self._write(f"final state {status.value}", lambda: self.store.finish(self.run.id, status, **outcome))

    def _write(self, what: str, write: Callable[[], None]) -> None:
        write_until_recorded(what, write, self.closing, self.log)


def _resolve_device(requested: str) -> str:
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
