"""Train one run in a child process of the service (EXECUTOR=process).

Why a process: SB3's training loop is mostly Python and holds the GIL, so runs on threads of the
service take turns with each other and with the event loop answering requests. A child process has
its own interpreter: two runs use two cores, and request traffic no longer slows training.

The service's hosting thread (one per run, as with EXECUTOR=thread) starts the child, passes stop and
shutdown on to it through a pipe (buffered until the child reads it: unlike a signal, an order sent
before the child is ready is not lost, nor kills it) and, when the child died without recording an end
(killed, out of memory), records one. The child runs the same `TrainingJob` with its own database
engine and MLflow client, and shares the service's DATA_DIR (same machine), so models and checkpoints
are where the service looks.
Children are forked from a fork server that imported the training stack once: a run starts in well
under a second instead of the seconds a fresh interpreter spends importing torch.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from core.logging_setup import configure_logging
from core.settings import Settings
from mlflow_client import Tracker
from records.store import RunStore
from records.tables import RunStatus, TrainingRun
from training.executors.base import end_abandoned_run
from training.executors.threads import ThreadExecutor
from training.executors.worker import tracker_artifact_dir, train_run
from training.job import JobControl

log = structlog.get_logger(__name__)

# Modules the fork server imports once, so that each child starts with them loaded.
PRELOADED_MODULES = ["training.executors.processes"]
FORWARD_INTERVAL_S = 0.2
CHILD_TRACKING_FLUSH_S = 30.0
TRAINING_PROCESS_NICENESS = 10
STOP = "stop"  # stop and save: the user asked
INTERRUPT = "interrupt"  # save and end `interrupted`: the service is going away

_context_lock = threading.Lock()
_context: ForkServerContext | None = None


def fork_server_context() -> ForkServerContext:
    """This process's fork server context, its preload list set once (before the server starts)."""
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            assert isinstance(context, ForkServerContext)
            context.set_forkserver_preload(PRELOADED_MODULES)
            _context = context
        return _context


# --- in the service: the run's hosting thread ----------------------------------------------------------


class ProcessExecutor(ThreadExecutor):
    """One child process per run, each started and watched by a hosting thread of the service (as
    EXECUTOR=thread has one thread per run), at most MAX_CONCURRENT_RUNS at once."""

    def start(self) -> None:
        """Start the fork server in the background (it imports the training stack for a few seconds),
        so that the first run does not wait for it."""
        threading.Thread(target=start_fork_server, name="fork-server-start", daemon=True).start()

    def _train(self, run: TrainingRun, control: JobControl) -> None:
        try:
            train_in_child_process(self.settings, self.store, self.tracker, run, control)
        except Exception:  # the child never started, or could not be watched (the job records its errors)
            log.exception("run_hosting_failed", experiment_id=run.id)
            with contextlib.suppress(Exception):
                self.store.finish(run.id, RunStatus.FAILED, error="could not start the training process")


def train_in_child_process(
    settings: Settings, store: RunStore, tracker: Tracker | None, run: TrainingRun, control: JobControl
) -> None:
    """Train `run` in a child process; blocks the calling thread until the child has exited.

    :param control: the service's handle: `stop` (and `shutting_down`) are passed on to the child.
    """
    context = fork_server_context()
    # Orders to the child; it reads EOF once the service is gone, however it died (even SIGKILL).
    lifeline_end, lifeline = context.Pipe(duplex=False)
    child = context.Process(
        target=child_main,
        args=(settings, run.id, lifeline_end),
        name=f"train-{run.id[:8]}",
        daemon=True,  # at the service's exit multiprocessing sends it SIGTERM: save, end `interrupted`
    )
    try:
        child.start()
        lifeline_end.close()
        log.info("training_process_started", experiment_id=run.id, pid=child.pid)
        _forward_control(child, control, lifeline)
    finally:
        lifeline.close()
    if child.exitcode:  # 0: the job recorded its end; never None after the wait
        record_child_death(store, tracker, run.id, child.exitcode)


def _forward_control(child: BaseProcess, control: JobControl, lifeline: Connection) -> None:
    """Wait for the child's exit, passing a stop request or the service's shutdown on to it."""
    sent: str | None = None
    while child.exitcode is None:
        child.join(FORWARD_INTERVAL_S)
        wanted = _order_for(control)
        if wanted is not None and wanted != sent and child.exitcode is None:
            with contextlib.suppress(OSError):  # the child is gone: its exit code tells the rest
                lifeline.send(wanted)
            sent = wanted


def _order_for(control: JobControl) -> str | None:
    if not control.stop.is_set():
        return None
    return INTERRUPT if control.shutting_down else STOP


def record_child_death(store: RunStore, tracker: Tracker | None, run_id: str, exitcode: int) -> None:
    """A child that exited without recording its run's end (killed, crashed) leaves it `running`:
    mark it failed with what happened, and close its MLflow run."""
    reason = f"the process training this run exited unexpectedly ({describe_exit(exitcode)})"
    if end_abandoned_run(store, tracker, run_id, RunStatus.FAILED, reason):
        log.warning("training_process_died", experiment_id=run_id, exitcode=exitcode, reason=reason)


def describe_exit(exitcode: int) -> str:
    """`multiprocessing` exit codes: negative for a signal."""
    if exitcode >= 0:
        return f"exit status {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    hint = " (the kernel's out-of-memory killer sends it)" if -exitcode == signal.SIGKILL else ""
    return f"killed by {name}{hint}"


# --- in the child ------------------------------------------------------------------------------------


def child_main(settings: Settings, run_id: str, lifeline: Connection) -> None:
    """The child's whole life: train the run, then flush MLflow and exit."""
    configure_logging(settings.log_level, settings.log_json, settings.models_dir)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, TRAINING_PROCESS_NICENESS)
    control, closing = JobControl(), threading.Event()
    _handle_signals(control, closing)
    _watch_lifeline(lifeline, control, closing)
    train_run(settings, run_id, control, tracker_artifact_dir(settings), CHILD_TRACKING_FLUSH_S, closing)


def _handle_signals(control: JobControl, closing: threading.Event) -> None:
    def interrupt(_signum: int, _frame: Any) -> None:
        _interrupt(control, closing)

    # SIGTERM (multiprocessing at the service's exit, an operator's kill): save, end `interrupted`.
    signal.signal(signal.SIGTERM, interrupt)
    # Ctrl-C in a terminal reaches the whole process group: the service shuts down and tells us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupt(control: JobControl, closing: threading.Event) -> None:
    control.shutting_down = True
    closing.set()
    control.stop.set()


def _watch_lifeline(lifeline: Connection, control: JobControl, closing: threading.Event) -> None:
    """Follow the service's orders. EOF: the service died without telling us (SIGKILL); save and end
    `interrupted`, so that a restarted service resumes the run from here, not from its last periodic
    checkpoint. (The fork server, our parent, outlives the service while we run: its pid tells nothing.)"""

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                order = lifeline.recv()
                if order == STOP:
                    control.stop.set()
                elif order == INTERRUPT:
                    _interrupt(control, closing)
        if not closing.is_set():
            log.warning("service_process_gone")
            _interrupt(control, closing)

    threading.Thread(target=watch, name="lifeline-watch", daemon=True).start()


def start_fork_server() -> None:
    """Start the fork server now, with the training stack imported."""
    fork_server_context()
    from multiprocessing import forkserver

    forkserver.ensure_running()
