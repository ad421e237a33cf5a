"""Train each run on a thread of the service's process (EXECUTOR=thread, the default).

The simplest engine: no start-up cost and nothing to set up, but SB3's training loop is mostly Python
and holds the GIL, so runs take turns with each other and with the event loop answering requests
(EXECUTOR=process avoids that).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading

import structlog
import torch

from core.settings import Settings
from mlflow_client import Tracker
from records.store import RunStore
from records.tables import TrainingRun
from training.executors.base import RunEnded, has_local_checkpoint
from training.job import JobControl, TrainingJob

log = structlog.get_logger(__name__)

TRAINING_THREAD_NICENESS = 10


@dataclasses.dataclass
class _LocalRun:
    """This process's handle on a run it hosts on a thread."""

    thread: threading.Thread
    control: JobControl = dataclasses.field(default_factory=JobControl)


class ThreadExecutor:
    """One thread of this process per run, at most MAX_CONCURRENT_RUNS at once.

    :param settings: service settings.
    :param store: run records.
    :param tracker: experiment tracking (MLflow); None disables it.
    :param on_run_ended: called when a run's thread is done, so the scheduler can fill the slot.
    """

    def __init__(
        self, settings: Settings, store: RunStore, tracker: Tracker | None, on_run_ended: RunEnded
    ) -> None:
        self.settings = settings
        self.store = store
        self.tracker = tracker
        self._on_run_ended = on_run_ended
        self._runs: dict[str, _LocalRun] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def start(self) -> None:
        """Nothing to prepare: a thread starts at once."""

    def submit(self, run: TrainingRun) -> None:
        thread = threading.Thread(target=self._host, args=(run,), name=f"train-{run.id[:8]}", daemon=True)
        with self._lock:
            self._runs[run.id] = _LocalRun(thread=thread)
        thread.start()

    def request_stop(self, run_id: str) -> None:
        with self._lock:
            local = self._runs.get(run_id)
        if local is not None:
            local.control.stop.set()

    def run_ids(self) -> list[str]:
        with self._lock:
            return list(self._runs)

    def capacity(self) -> int:
        return self.settings.max_concurrent_runs

    def cuda_unavailable(self) -> str | None:
        return None if torch.cuda.is_available() else "this server has no usable CUDA device"

    def can_resume(self, run: TrainingRun) -> bool:
        return has_local_checkpoint(self.settings, run)

    def shutdown(self, timeout_s: float) -> None:
        """Stop every run gracefully (each saves its model and ends `interrupted`), within `timeout_s`."""
        self._closing.set()
        with self._lock:
            local = list(self._runs.values())
        for run in local:
            run.control.shutting_down = True
            run.control.stop.set()
        for run in local:
            run.thread.join(timeout=timeout_s)

    def _host(self, run: TrainingRun) -> None:
        """The run's thread: train it, then free its slot."""
        lower_thread_priority()
        with self._lock:
            control = self._runs[run.id].control
        try:
            self._train(run, control)
        finally:
            with self._lock:
                self._runs.pop(run.id, None)
            self._on_run_ended()

    def _train(self, run: TrainingRun, control: JobControl) -> None:
        """Train the run to its final state on this thread (the job records its own errors)."""
        TrainingJob(self.settings, self.store, self.tracker, run, control, self._closing).execute()


def lower_thread_priority() -> None:
    """Make the calling (training) thread yield the CPU to the API's threads when both want it."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TRAINING_THREAD_NICENESS)
