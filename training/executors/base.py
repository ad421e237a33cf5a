"""What every executor offers the service: the one interface for where runs train, and its shared helpers.

Like `concurrent.futures.Executor`, one interface and several engines (threads of this process, child
processes, a Ray cluster): the service holds one executor, chosen once from EXECUTOR, and never asks
which one it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog

from core.errors import describe
from core.settings import Settings
from mlflow_client import Tracker
from records.store import RunStore
from records.tables import RunStatus, TrainingRun
from training.checkpoints import readable_checkpoint

log = structlog.get_logger(__name__)

# What an executor calls when one of its runs has ended, so that the scheduler fills the slot.
RunEnded = Callable[[], None]


class SavedModelUnavailable(RuntimeError):
    """A run's saved model may exist, but where it is kept cannot be read now (e.g. MLflow is down)."""


class Executor(Protocol):
    """Trains the runs the service has claimed, and is the service's handle on them."""

    def start(self) -> None:
        """Get ready to train (join a cluster, start a fork server); called once, before `submit`."""

    def submit(self, run: TrainingRun) -> None:
        """Start training `run`, already claimed as `running`; returns at once.

        Never raises: a run that cannot start is recorded as failed.
        """

    def request_stop(self, run_id: str) -> None:
        """Pass a stop request on to the run, if this executor trains it (the job saves and ends)."""

    def run_ids(self) -> list[str]:
        """The runs this executor trains now, for the service's heartbeat."""

    def capacity(self) -> int:
        """How many runs may train at once (the concurrency cap)."""

    def cuda_unavailable(self) -> str | None:
        """None when runs can train on CUDA here; otherwise why not, as a user should read it."""

    def can_resume(self, run: TrainingRun) -> bool:
        """Something was saved to resume the run from, where this executor's runs can read it.

        :raises SavedModelUnavailable: the model may be saved where it cannot be read now.
        """

    def shutdown(self, timeout_s: float) -> None:
        """Ask every run to save and end `interrupted`; wait up to `timeout_s` for them."""


def has_local_checkpoint(settings: Settings, run: TrainingRun) -> bool:
    """A model or checkpoint of the run that is an intact archive is saved in this machine's data
    directory."""
    return readable_checkpoint(settings.run_dir(run.id)) is not None


def end_abandoned_run(
    store: RunStore, tracker: Tracker | None, run_id: str, status: RunStatus, reason: str
) -> bool:
    """Record the end of a run whose job went away without recording one (its process or worker died)
    and close its MLflow run. False when the job had recorded its own end, or the database is down
    (then the heartbeat lapses and the run ends `interrupted`)."""
    try:
        run = store.get(run_id)
        if run.status != RunStatus.RUNNING.value:
            return False
        store.finish(run_id, status, error=reason)
    except Exception as error:
        log.warning("run_end_not_recorded", experiment_id=run_id, error=describe(error))
        return False
    if tracker is not None and run.mlflow_run_id:
        tracker.close_orphan(run.mlflow_run_id, status.value, lambda: store.is_active(run_id))
    return True
