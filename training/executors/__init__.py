"""Where runs train: the executor the settings ask for (threads, child processes or a Ray cluster)."""

from __future__ import annotations

from core.settings import Settings
from mlflow_client import Tracker
from records.store import RunStore
from training.executors.base import Executor, RunEnded, SavedModelUnavailable
from training.executors.processes import ProcessExecutor
from training.executors.threads import ThreadExecutor

__all__ = ["Executor", "SavedModelUnavailable", "make_executor"]


def make_executor(
    settings: Settings, store: RunStore, tracker: Tracker | None, on_run_ended: RunEnded
) -> Executor:
    """The executor EXECUTOR names; Ray is imported only when it is the one.

    :param settings: service settings.
    :param store: run records.
    :param tracker: experiment tracking (MLflow); None disables it.
    :param on_run_ended: called whenever a run has ended, so the scheduler can fill the slot.
    """
    if settings.executor == "ray":
        from training.executors.ray_cluster import RayExecutor

        return RayExecutor(settings, store, tracker, on_run_ended)
    if settings.executor == "process":
        return ProcessExecutor(settings, store, tracker, on_run_ended)
    return ThreadExecutor(settings, store, tracker, on_run_ended)
