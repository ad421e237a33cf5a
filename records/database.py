"""Database engine, sessions and schema migrations (Alembic) for SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_database_url(url: str) -> str:
    """Accept the URLs users paste (`postgresql://…`) and pin them to the driver we ship (psycopg2).

    SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which is not installed.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_configurer(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    """The `connect` listener that sets up each new SQLite connection."""

    def configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # busy_timeout first: switching to WAL itself needs the lock when other processes hold it.
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    return configure


def create_db_engine(url: str, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so threads and worker processes can share it.

    :param sqlite_busy_timeout_ms: how long a SQLite write waits for another connection's lock before it
        fails with "database is locked" (tests of that failure set it short).
    """
    url = normalize_database_url(url)
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": sqlite_busy_timeout_ms / 1000}
        )
        event.listen(engine, "connect", _sqlite_configurer(sqlite_busy_timeout_ms))
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=10)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations when several uvicorn workers start at once."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        lock_path = Path(f"{url.database}.migrate.lock")
        with lock_path.open("w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        return
    with engine.connect() as conn:
        # An arbitrary constant key: the whole service shares one migration lock.
        conn.execute(text("SELECT pg_advisory_lock(7410522)"))
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(7410522)"))
            conn.commit()


def alembic_config(url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    # ConfigParser treats % as interpolation; URL-encoded passwords contain it.
    config.set_main_option("sqlalchemy.url", normalize_database_url(url).replace("%", "%%"))
    return config


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema to the newest migration (safe to call from every worker at start-up)."""
    url = engine.url.render_as_string(hide_password=False)
    with _migration_lock(engine):
        command.upgrade(alembic_config(url), "head")
