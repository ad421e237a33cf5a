"""A sweep's Optuna study: its storage in the service's own database, its pruner, and the objective.

The study of sweep `<id>` is named `sweep-<id>` and lives in Optuna's RDB storage on DATABASE_URL (its
own tables, `studies`, `trials`, …, next to ours), so every worker process, child process and Ray worker
sees the same study, and it survives restarts.

Objective: the trial's best held-out success rate, ties broken by fewer environment steps to reach it.
Optuna ranks one number, so the value is `success_rate − TIE_BREAK × steps / budget`: the tie-break term
is below 1e-4, less than one maze of difference in any evaluation (at most 5,000 mazes: 2e-4), so it only
orders trials whose success rates are equal.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.storages import RDBStorage

from records.database import SQLITE_BUSY_TIMEOUT_MS, is_sqlite, normalize_database_url

TIE_BREAK = 1e-4

_storages: dict[str, RDBStorage] = {}
_storages_lock = threading.Lock()

optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_name(sweep_id: str) -> str:
    return f"sweep-{sweep_id}"


def storage(database_url: str) -> RDBStorage:
    """Optuna's RDB storage on the service's database, one per process (it holds a connection pool).

    Our Alembic migrations own the database's `alembic_version` table, which Optuna would also read
    as its own schema version: its compatibility check is skipped (Optuna's tables are created by
    Optuna, at the version pinned in requirements.txt), and the service migrates its schema before
    anything opens this storage.
    """
    url = normalize_database_url(database_url)
    with _storages_lock:
        if url not in _storages:
            if is_sqlite(url):
                engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
            else:
                engine_kwargs = {"pool_pre_ping": True}
            _storages[url] = RDBStorage(url, engine_kwargs=engine_kwargs, skip_compatibility_check=True)
        return _storages[url]


def close_storage(database_url: str) -> None:
    """Close this process's storage on `database_url` (its connections), if it has one."""
    with _storages_lock:
        opened = _storages.pop(normalize_database_url(database_url), None)
    if opened is not None:
        opened.engine.dispose()


@dataclasses.dataclass(frozen=True)
class PrunerSettings:
    """Optuna's median pruner on the periodic held-out evaluations (rl-baselines3-zoo's choice).

    :param enabled: False: no trial is pruned.
    :param n_startup_trials: no pruning until this many trials have completed.
    :param n_warmup_evaluations: a trial is never pruned at its first this many evaluations.
    """

    enabled: bool = True
    n_startup_trials: int = 5
    n_warmup_evaluations: int = 1

    def pruner(self, steps_per_evaluation: int) -> optuna.pruners.BasePruner:
        """The Optuna pruner; steps are timesteps, one evaluation every `steps_per_evaluation`."""
        if not self.enabled:
            return optuna.pruners.NopPruner()
        return optuna.pruners.MedianPruner(
            n_startup_trials=self.n_startup_trials,
            n_warmup_steps=self.n_warmup_evaluations * steps_per_evaluation + 1,
        )


def create_study(database_url: str, sweep_id: str, request: Mapping[str, Any]) -> None:
    """Create the sweep's study, maximising the objective, with its pruner's settings as study
    attributes (so that a trial's job needs nothing but the study). A sampler is not stored with a
    study: the driver asks with a TPE sampler seeded for each trial."""
    study = optuna.create_study(
        study_name=study_name(sweep_id), storage=storage(database_url), direction="maximize"
    )
    study.set_user_attr("pruner", dict(request["pruner"]))
    study.set_user_attr("steps_per_evaluation", steps_per_evaluation(request))


def load_study(database_url: str, sweep_id: str) -> optuna.Study:
    """The sweep's study, with the pruner its request asked for."""
    study = optuna.load_study(study_name=study_name(sweep_id), storage=storage(database_url))
    settings = PrunerSettings(**study.user_attrs["pruner"])
    study.pruner = settings.pruner(int(study.user_attrs["steps_per_evaluation"]))
    return study


def running_trial(database_url: str, study: optuna.Study, number: int) -> optuna.Trial:
    """A handle on the study's running trial `number` (to report to, or to annotate)."""
    rdb = storage(database_url)
    trial_id = rdb.get_trial_id_from_study_id_trial_number(
        rdb.get_study_id_from_name(study.study_name), number
    )
    return optuna.Trial(study, trial_id)


def steps_per_evaluation(request: Mapping[str, Any]) -> int:
    return int(request["eval_every_episodes"]) * int(request["timesteps_per_episode"])


@dataclasses.dataclass(frozen=True)
class Objective:
    """A trial's result: the best held-out success rate and the steps it took to first reach it.

    :param success_rate: best held-out success rate over the trial's evaluations.
    :param steps: timestep of the first evaluation at that rate.
    :param value: what Optuna maximises (see the module).
    """

    success_rate: float
    steps: int
    value: float


def objective(intermediate: Mapping[int, float], budget: int) -> Objective | None:
    """The objective from a trial's evaluations (timestep → success rate); None without any."""
    if not intermediate:
        return None
    best = max(intermediate.values())
    steps = min(step for step, rate in intermediate.items() if rate == best)
    return Objective(best, steps, best - TIE_BREAK * min(1.0, steps / max(1, budget)))
