"""Drives every unfinished sweep forward: hands out trials as runs, records finished runs in the study,
resumes trials a restart interrupted, and ends the sweep. Every worker process runs one driver.

Workers never run the same trial twice: a trial is handed out only by the worker whose compare-and-set
on the sweep's `trials_claimed` succeeded (`SweepStore.claim_trial`), and that worker alone asks Optuna
for it and starts its run. Recording a finished trial is idempotent (Optuna skips a second `tell`), and
resuming an interrupted run is one atomic state change (`TrainingService.resume`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import optuna
import structlog
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from api.schemas import StartTrainingRequest
from core.errors import NotResumable, ServiceBusy, ServiceError, describe
from core.settings import Settings
from records.tables import RunStatus, StopReason, Sweep, SweepStatus, TrainingRun
from sweeps.records import SweepStore
from sweeps.search_space import distributions
from sweeps.study import Objective, close_storage, load_study, objective, running_trial
from sweeps.tracking import SweepTracking
from training_service import TrainingService

log = structlog.get_logger(__name__)

PASS_INTERVAL_S = 1.0
# A trial asked for but without a run after this long lost its worker between the two steps.
ORPHAN_TRIAL_AFTER = timedelta(seconds=60)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# The run request fields a sweep passes to each of its trials.
TRIAL_FIELDS = (
    "algorithm",
    "total_episodes",
    "timesteps_per_episode",
    "maze_size",
    "maze_mode",
    "seed",
    "n_envs",
    "device",
    "policy",
    "eval_every_episodes",
    "eval_episodes",
    "target_success_rate",
)


def trial_request(request: Mapping[str, Any], params: Mapping[str, Any]) -> StartTrainingRequest:
    """The run request of a trial with `params`; raises ValidationError when they are not accepted."""
    fields = {key: request[key] for key in TRIAL_FIELDS if request.get(key) is not None}
    return StartTrainingRequest.model_validate({**fields, "hyperparameters": dict(params)})


def trial_objective(trial: FrozenTrial, request: Mapping[str, Any]) -> Objective | None:
    budget = int(request["total_episodes"]) * int(request["timesteps_per_episode"])
    return objective(trial.intermediate_values, budget)


class SweepDriver:
    """One background thread that advances every unfinished sweep about once a second.

    :param settings: the database URL (the studies' storage).
    :param store: the sweeps table.
    :param training: starts, stops and resumes the trials' runs.
    :param tracking: the sweeps' MLflow parent runs; None when MLflow is off.
    """

    def __init__(
        self,
        settings: Settings,
        store: SweepStore,
        training: TrainingService,
        tracking: SweepTracking | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.training = training
        self.tracking = tracking
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start driving; sweeps a previous process left unfinished go on from where they are."""
        self._thread = threading.Thread(target=self._loop, name="sweep-driver", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def shutdown(self) -> None:
        """Stop driving (before the training service shuts down: its runs end `interrupted`, and
        the next start resumes them)."""
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        close_storage(self.settings.database_url)

    def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                sweeps = self.store.unfinished()
            except Exception as error:
                log.warning("sweeps_not_read", error=describe(error))
                sweeps = []
            for sweep in sweeps:
                if self._closing.is_set():
                    return
                try:
                    self.advance(sweep)
                except Exception as error:
                    log.warning("sweep_not_advanced", sweep_id=sweep.id, error=describe(error))
            self._wake.wait(PASS_INTERVAL_S)
            self._wake.clear()

    def advance(self, sweep: Sweep) -> None:
        """One pass over a sweep: record ended trials, start new ones, end the sweep when all are done."""
        if self.tracking is not None and sweep.mlflow_run_id is None:
            self._create_parent_run(sweep)
        study = load_study(self.settings.database_url, sweep.id)
        runs = {run.sweep_trial: run for run in self.store.trial_runs(sweep.id)}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self._follow(sweep, study, trial, runs.get(trial.number))
        if self.tracking is not None and sweep.mlflow_run_id is not None:
            for run in runs.values():
                self.tracking.adopt(sweep.mlflow_run_id, sweep.id, run)
        finished = len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
        while (
            sweep.status == SweepStatus.RUNNING.value
            and not self._closing.is_set()
            and self.store.claim_trial(sweep, finished)
        ):
            if not self._start_trial(sweep, study):
                break
        if sweep.trials_claimed >= sweep.n_trials or sweep.status == SweepStatus.STOPPING.value:
            trials = study.get_trials(deepcopy=False)
            if all(trial.state in FINISHED_STATES for trial in trials):
                self._end(sweep, trials)

    def _create_parent_run(self, sweep: Sweep) -> None:
        assert self.tracking is not None
        try:
            parent = self.tracking.create_parent(sweep)
        except Exception as error:  # MLflow down: the sweep goes on, the parent is made later
            log.warning("sweep_parent_run_not_created", sweep_id=sweep.id, error=describe(error))
            return
        if parent is None:
            return
        if self.store.set_mlflow_run(sweep.id, parent):
            sweep.mlflow_run_id = parent
        else:
            self.tracking.discard(parent)
            sweep.mlflow_run_id = self.store.get(sweep.id).mlflow_run_id

    def _start_trial(self, sweep: Sweep, study: optuna.Study) -> bool:
        """Ask the study for the trial this worker claimed and start its run; False when the service's
        queue is full (the trial is given back and its parameters asked again next time)."""
        # Seeded by the sweep's seed and the trial's place, so a sweep draws the same parameters again
        # (TPE's random start-up trials exactly; later ones given the same results).
        study.sampler = optuna.samplers.TPESampler(
            seed=(sweep.request["seed"] + sweep.trials_claimed) % 2**32
        )
        trial = study.ask(distributions(sweep.request["search_space"]))
        try:
            request = trial_request(sweep.request, trial.params)
            run = self.training.submit(request, sweep_trial=(sweep.id, trial.number))
        except ServiceBusy:
            study.tell(trial, state=TrialState.FAIL)
            study.enqueue_trial(trial.params)
            self.store.release_trial(sweep.id)
            return False
        except (ValidationError, ServiceError) as error:
            message = _one_line(error)
            log.info("trial_not_started", sweep_id=sweep.id, trial=trial.number, error=message)
            trial.set_user_attr("error", message)
            study.tell(trial, state=TrialState.FAIL)
            return True
        trial.set_user_attr("run_id", run.id)
        log.info("trial_started", sweep_id=sweep.id, trial=trial.number, experiment_id=run.id)
        return True

    def _follow(self, sweep: Sweep, study: optuna.Study, trial: FrozenTrial, run: TrainingRun | None) -> None:
        """Record a trial whose run has ended; resume one a restart interrupted."""
        if run is None:
            started = trial.datetime_start  # Optuna's: naive, local time
            if started is not None and datetime.now() - started > ORPHAN_TRIAL_AFTER:
                self._fail(study, trial, "its run was never created (the worker starting it stopped)")
            return
        status = RunStatus(run.status)
        if not status.is_final:
            return
        if status is RunStatus.INTERRUPTED and sweep.status == SweepStatus.RUNNING.value:
            if self._resume(run):
                return
            self._fail(study, trial, f"its run {run.id} was interrupted and cannot be resumed")
        elif status is RunStatus.COMPLETED and run.stop_reason == StopReason.PRUNED.value:
            study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
            log.info("trial_recorded", sweep_id=sweep.id, trial=trial.number, state="pruned")
        elif status is RunStatus.COMPLETED:
            result = trial_objective(trial, sweep.request) or _objective_of_run(run)
            if result is None:
                self._fail(study, trial, "its run made no held-out evaluation (EVAL_EPISODES=0?)")
                return
            handle = running_trial(self.settings.database_url, study, trial.number)
            handle.set_user_attr("success_rate", result.success_rate)
            handle.set_user_attr("steps_to_best", result.steps)
            study.tell(trial.number, result.value, skip_if_finished=True)
            log.info("trial_recorded", sweep_id=sweep.id, trial=trial.number, value=result.value)
        else:
            self._fail(study, trial, f"its run ended {run.status}" + (f": {run.error}" if run.error else ""))

    def _resume(self, run: TrainingRun) -> bool:
        """Resume an interrupted trial run; True if it is queued or running again (by any worker)."""
        try:
            self.training.resume(run.id)
            log.info("trial_resumed", sweep_id=run.sweep_id, trial=run.sweep_trial, experiment_id=run.id)
            return True
        except NotResumable:
            # Another worker may have resumed it first: then it is no longer interrupted.
            return not RunStatus(self.training.store.get(run.id).status).is_final

    def _fail(self, study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
        running_trial(self.settings.database_url, study, trial.number).set_user_attr("error", reason)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        log.info("trial_recorded", study=study.study_name, trial=trial.number, state="fail", reason=reason)

    def _end(self, sweep: Sweep, trials: Sequence[FrozenTrial]) -> None:
        final = SweepStatus.STOPPED if sweep.status == SweepStatus.STOPPING.value else SweepStatus.COMPLETED
        if not self.store.change_status(sweep.id, [SweepStatus(sweep.status)], final):
            return  # another worker ended it
        log.info("sweep_finished", sweep_id=sweep.id, status=final.value, trials=len(trials))
        if self.tracking is None or sweep.mlflow_run_id is None:
            return
        counts = {state.name.lower(): sum(t.state == state for t in trials) for state in FINISHED_STATES}
        try:
            self.tracking.finish(sweep.mlflow_run_id, final.value, best_trial(trials), counts)
        except Exception as error:
            log.warning("sweep_result_not_tracked", sweep_id=sweep.id, error=describe(error))


def best_trial(trials: Sequence[FrozenTrial]) -> tuple[int, dict[str, Any], Objective, str | None] | None:
    """The completed trial with the best objective (the first on a tie): number, params, objective, run."""
    completed = [trial for trial in trials if trial.state == TrialState.COMPLETE and trial.value is not None]
    if not completed:
        return None
    best = max(completed, key=lambda trial: (trial.value or 0.0, -trial.number))
    result = recorded_objective(best)
    assert result is not None
    return best.number, dict(best.params), result, best.user_attrs.get("run_id")


def recorded_objective(trial: FrozenTrial) -> Objective | None:
    """A completed trial's objective as recorded when it completed."""
    if trial.state != TrialState.COMPLETE or trial.value is None:
        return None
    attrs = trial.user_attrs
    return Objective(float(attrs.get("success_rate", 0.0)), int(attrs.get("steps_to_best", 0)), trial.value)


def _objective_of_run(run: TrainingRun) -> Objective | None:
    """The objective from a run's record, when its evaluations did not all reach the study."""
    if run.best_eval_success_rate is None or run.best_eval_timesteps is None:
        return None
    return objective({run.best_eval_timesteps: run.best_eval_success_rate}, run.total_timesteps)


def _one_line(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
        )
    return describe(error)
