"""Transactions on the run records: short write transactions that announce which runs they changed.

The base of `RunStore` (`records/store.py`). Every write goes through `_writing`, so that the status
cache (`on_write`) learns of every change without watching the database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import false, text, update
from sqlalchemy.orm import Session, sessionmaker

from core.errors import RunNotFound
from records.tables import TrainingRun

# Every transaction that counts runs before it adds or starts one takes this PostgreSQL advisory lock.
ADMISSION_LOCK_KEY = 7410523
# /health waits this long for SQLite's write lock: a longer wait means writes are stuck.
WRITE_CHECK_TIMEOUT_S = 2.0

WriteListener = Callable[[Collection[str]], None]


class RunTransactions:
    """Sessions and transactions on `training_runs`.

    :param session_factory: sessions bound to the service's engine.

    `on_write` listeners are called with the ids of the runs a write may have changed, once it
    committed, on the writing thread (the status cache drops its copies of them).
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory
        self.on_write: list[WriteListener] = []

    @contextmanager
    def _writing(self, run_ids: Collection[str] = ()) -> Iterator[tuple[Session, set[str]]]:
        """A write transaction; `run_ids` and the ids added to the yielded set are announced once it
        committed (not at all when it failed: nothing changed)."""
        written = set(run_ids)
        with self._session_factory() as session, session.begin():
            yield session, written
        if written:
            for listener in self.on_write:
                listener(written)

    @contextmanager
    def _serialised_writing(self, run_ids: Collection[str] = ()) -> Iterator[tuple[Session, set[str]]]:
        """A write transaction that holds the write lock from its first statement, so that what it
        counts stays true until it commits, in every worker process: SQLite's BEGIN IMMEDIATE, or on
        PostgreSQL a transaction-scoped advisory lock that every such transaction takes."""
        with self._writing(run_ids) as (session, written):
            if session.get_bind().dialect.name == "postgresql":
                session.execute(text(f"SELECT pg_advisory_xact_lock({ADMISSION_LOCK_KEY})"))
            else:
                session.execute(text("BEGIN IMMEDIATE"))
            yield session, written

    def _update(self, run_id: str, **values: Any) -> None:
        with self._writing([run_id]) as (session, _):
            session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(**values))

    def get(self, run_id: str) -> TrainingRun:
        with self._session_factory() as session:
            run = session.get(TrainingRun, run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    def ping(self) -> None:
        with self._session_factory() as session:
            session.execute(text("SELECT 1"))

    def check_writable(self) -> None:
        """Take the database's write lock and let it go; raises when the database cannot be written.

        SQLite is checked on a connection of its own: a pooled connection opened before the file became
        unreadable still works, while every connection opened since fails.
        """
        engine = self._session_factory.kw["bind"]
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        if not database or database == ":memory:":
            with self._session_factory() as session, session.begin():
                # Matches no row, yet needs the table's write lock: refused by a read-only database.
                session.execute(update(TrainingRun).where(false()).values(stop_requested=True))
            return
        connection = sqlite3.connect(
            f"{Path(database).resolve().as_uri()}?mode=rw",
            uri=True,
            timeout=WRITE_CHECK_TIMEOUT_S,
            isolation_level=None,
        )
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
