"""A sweep trial's pruning, inside its training job: report each held-out evaluation to the Optuna
trial and end the run (`stop_reason: pruned`) when the sweep's median pruner says so.

It runs wherever the job runs (a service thread, a child process, a Ray worker): like the rest of the
job it needs only the database, where the study lives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from core.errors import describe
from core.settings import Settings
from records.store import EvaluationState
from records.tables import StopReason, TrainingRun
from training.evaluation_callback import ExtraRule

if TYPE_CHECKING:
    import optuna

log = structlog.get_logger(__name__)


def trial_pruning(run: TrainingRun, settings: Settings) -> ExtraRule | None:
    """The pruning rule of a sweep's trial run; None for a run that is no sweep's trial."""
    if run.sweep_id is None or run.sweep_trial is None:
        return None
    return TrialPruning(settings.database_url, run.sweep_id, run.sweep_trial)


class TrialPruning:
    """Reports every evaluation of one trial to its study and asks the pruner.

    A database error while reporting is logged and the trial goes on: losing a pruning decision costs
    only training time, losing the run would cost the trial.

    :param database_url: the service's database (where the study lives).
    :param sweep_id: the sweep.
    :param trial_number: the trial's number in the study.
    """

    def __init__(self, database_url: str, sweep_id: str, trial_number: int) -> None:
        self._database_url = database_url
        self._sweep_id = sweep_id
        self._trial_number = trial_number
        self._trial: optuna.Trial | None = None

    def __call__(self, state: EvaluationState) -> StopReason | None:
        try:
            trial = self._trial or self._open()
            trial.report(state.eval_success_rate, state.eval_timesteps)
            prune = trial.should_prune()
        except Exception as error:
            log.warning("trial_not_reported", sweep_id=self._sweep_id, error=describe(error))
            return None
        if prune:
            log.info("trial_pruned", sweep_id=self._sweep_id, trial=self._trial_number)
        return StopReason.PRUNED if prune else None

    def _open(self) -> optuna.Trial:
        from sweeps.study import load_study, running_trial  # only sweep trials pay for importing Optuna

        study = load_study(self._database_url, self._sweep_id)
        self._trial = running_trial(self._database_url, study, self._trial_number)
        return self._trial
