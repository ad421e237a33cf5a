"""What the `/sweeps` routes do: create a sweep (its study and record), stop it, and describe it from
its study and its trials' runs."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import optuna
import structlog
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from api.schemas.sweeps import SweepDetail, SweepList, SweepRequest, SweepSummary, TrialInfo
from core.errors import InvalidRequest
from records.tables import RunStatus, Sweep, SweepStatus, TrainingRun
from sweeps.driver import SweepDriver, best_trial, recorded_objective, trial_request
from sweeps.search_space import default_search_space
from sweeps.study import create_study, load_study

log = structlog.get_logger(__name__)

MIN_TRIALS_FOR_IMPORTANCES = 2


class SweepService:
    """Sweeps for the API; the driver (one per worker) does the rest in the background.

    :param driver: the worker's sweep driver (its store, training service and settings).
    """

    def __init__(self, driver: SweepDriver) -> None:
        self.driver = driver
        self.store = driver.store
        self.settings = driver.settings

    def create(self, request: SweepRequest) -> Sweep:
        """Validate the trials' run request here, create the study and the sweep; the driver starts
        the trials."""
        resolved = self._resolve(request)
        try:
            self.driver.training.check(trial_request(resolved, {}))
        except ValidationError as error:  # the bounds match the run request's: a guard, not a path
            first = error.errors()[0]
            raise InvalidRequest(".".join(str(part) for part in first["loc"]), first["msg"]) from None
        sweep_id = str(uuid.uuid4())
        create_study(self.settings.database_url, sweep_id, resolved)
        sweep = self.store.create(sweep_id, resolved)
        log.info("sweep_created", sweep_id=sweep_id, algorithm=request.algorithm, n_trials=request.n_trials)
        self.driver.wake()
        return sweep

    def _resolve(self, request: SweepRequest) -> dict[str, Any]:
        """The request with its defaults made concrete: search space, evaluation interval, seed."""
        if request.maze_size > self.settings.max_maze_size:
            raise InvalidRequest(
                "maze_size", f"must be at most {self.settings.max_maze_size} on this server (MAX_MAZE_SIZE)"
            )
        resolved = request.model_dump(mode="json")
        if request.search_space is None:
            resolved["search_space"] = default_search_space(request.algorithm, request.timesteps_per_episode)
        if request.eval_every_episodes is None:
            resolved["eval_every_episodes"] = max(1, request.total_episodes // 10)
        if request.seed is None:
            resolved["seed"] = secrets.randbelow(2**31)
        return resolved

    def stop(self, sweep_id: str) -> Sweep:
        """Hand out no more trials and stop the running ones; the driver records them and ends the
        sweep `stopped`. Stopping a stopping or ended sweep changes nothing."""
        sweep = self.store.get(sweep_id)
        if self.store.change_status(sweep_id, [SweepStatus.RUNNING], SweepStatus.STOPPING):
            for run in self.store.trial_runs(sweep_id):
                if not RunStatus(run.status).is_final:
                    self.driver.training.request_stop(run.id)
            log.info("sweep_stop_requested", sweep_id=sweep_id)
            self.driver.wake()
            sweep = self.store.get(sweep_id)
        return sweep

    def list(self, limit: int, offset: int) -> SweepList:
        sweeps, total = self.store.list(limit, offset)
        return SweepList(items=[summary(sweep) for sweep in sweeps], total=total)

    def detail(self, sweep_id: str) -> SweepDetail:
        sweep = self.store.get(sweep_id)
        study = load_study(self.settings.database_url, sweep_id)
        trials = study.get_trials(deepcopy=False)
        runs = {run.sweep_trial: run for run in self.store.trial_runs(sweep_id)}
        infos = [trial_info(trial, runs.get(trial.number)) for trial in trials]
        best = best_trial(trials)
        best_info = next((info for info in infos if best is not None and info.number == best[0]), None)
        return SweepDetail(
            **summary(sweep).model_dump(),
            request=sweep.request,
            trials=infos,
            best_trial=best_info,
            best_run_id=best_info.run_id if best_info else None,
            param_importances=_importances(study, trials),
        )


def summary(sweep: Sweep) -> SweepSummary:
    return SweepSummary(
        sweep_id=sweep.id,
        status=sweep.status,
        algorithm=sweep.algorithm,
        maze_size=sweep.maze_size,
        n_trials=sweep.n_trials,
        parallel_trials=sweep.parallel_trials,
        trials_started=sweep.trials_claimed,
        created_at=sweep.created_at,
        finished_at=sweep.finished_at,
        mlflow_run_id=sweep.mlflow_run_id,
    )


def trial_info(trial: FrozenTrial, run: TrainingRun | None) -> TrialInfo:
    result = recorded_objective(trial)
    return TrialInfo(
        number=trial.number,
        state=trial.state.name.lower(),
        params=dict(trial.params),
        run_id=run.id if run is not None else trial.user_attrs.get("run_id"),
        run_status=run.status if run is not None else None,
        stop_reason=run.stop_reason if run is not None else None,
        objective=trial.value if trial.state == TrialState.COMPLETE else None,
        success_rate=result.success_rate if result else None,
        steps_to_best=result.steps if result else None,
        evaluations={int(step): value for step, value in sorted(trial.intermediate_values.items())},
        error=trial.user_attrs.get("error"),
    )


def _importances(study: optuna.Study, trials: list[FrozenTrial]) -> dict[str, float] | None:
    completed = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    if len(completed) < MIN_TRIALS_FOR_IMPORTANCES:
        return None
    try:
        return {key: float(value) for key, value in optuna.importance.get_param_importances(study).items()}
    except Exception as error:  # e.g. every completed trial drew the same values: nothing to attribute
        log.info("importances_not_computed", study=study.study_name, error=str(error))
        return None
