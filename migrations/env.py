"""Alembic environment: runs migrations against DATABASE_URL (or the URL set by database.alembic_config)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool

from core.settings import get_settings
from records.database import is_sqlite, normalize_database_url
from records.tables import Base

config = context.config
if config.config_file_name is not None and not config.get_main_option("sqlalchemy.url"):
    # Invoked from the command line: use alembic.ini's logging and the service's settings.
    fileConfig(config.config_file_name, disable_existing_loggers=False)
    config.set_main_option(
        "sqlalchemy.url", normalize_database_url(get_settings().database_url).replace("%", "%%")
    )

target_metadata = Base.metadata


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or ""
    context.configure(
        url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=is_sqlite(url)
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things in place; batch mode rebuilds tables instead.
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
