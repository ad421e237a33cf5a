"""Writes of a run's record from its training job, retried while the database is unreachable or locked.

A run (minutes or hours of training) must survive a database restart or a blip: the job waits, keeping
its slot and its heartbeat, until the write lands. Progress is not written through here: a lost
snapshot is replaced by the next one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from core.errors import describe

# A write of the run's record waits out a database outage: first retry after this, doubling up to the max.
WRITE_RETRY_FIRST_S = 0.5
WRITE_RETRY_MAX_S = 10.0
# During shutdown the process is about to exit: wait this long at most, then give up (the next
# start-up marks the run interrupted).
WRITE_RETRY_AT_SHUTDOWN_S = 10.0
# Errors a database outage or a locked/unreadable SQLite file raise; anything else is a bug, not retried.
TRANSIENT_DATABASE_ERRORS = (OperationalError, InterfaceError, PoolTimeout, DisconnectionError)


def write_until_recorded(what: str, write: Callable[[], None], closing: threading.Event, log: Any) -> None:
    """Call `write` until it stops raising a transient database error.

    :param what: the write, for the log.
    :param write: the write itself.
    :param closing: set when the hosting process shuts down: then give up after
        WRITE_RETRY_AT_SHUTDOWN_S and re-raise.
    :param log: the job's bound logger.
    """
    delay = WRITE_RETRY_FIRST_S
    give_up_at: float | None = None
    while True:
        try:
            write()
            return
        except TRANSIENT_DATABASE_ERRORS as error:
            if closing.is_set():
                give_up_at = give_up_at or time.monotonic() + WRITE_RETRY_AT_SHUTDOWN_S
                if time.monotonic() >= give_up_at:
                    raise
            log.warning("record_not_written_yet", write=what, retry_in_s=delay, error=describe(error))
        time.sleep(delay)
        delay = min(2 * delay, WRITE_RETRY_MAX_S)
