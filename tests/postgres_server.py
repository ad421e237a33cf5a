"""A real PostgreSQL server for tests: `initdb` into a temp dir, loopback only, removed at the end.

Fixtures (register with `pytest_plugins = ["tests.postgres_server"]` in tests/conftest.py):

- `postgres_server` (session): one server shared by the whole test session.
- `postgres_url` (function): a fresh, empty database on that server, as the URL users paste:
  `postgresql://user:password@127.0.0.1:PORT/dbname`.
- `disposable_postgres_server` (function): a server of the test's own, for tests that stop and start it.

When the PostgreSQL server binaries are missing, these fixtures skip with the reason, except under CI
(the `CI` environment variable set), where they fail: CI must run the PostgreSQL tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import psycopg2
import pytest
from psycopg2 import sql

SUPERUSER = "rl_admin"
SUPERUSER_PASSWORD = "admin-password"
APP_USER = "rl_maze"
APP_PASSWORD = "app-password"
SERVICE_ACCOUNT = "postgres"
PG_CTL_TIMEOUT_S = 60
MISSING_HINT = (
    "install PostgreSQL's server binaries (Debian: apt-get install postgresql, "
    "or run scripts/install-system-deps.sh as root)"
)


class PostgresUnavailable(RuntimeError):
    """This machine cannot run a PostgreSQL server for the tests."""


def _skip_or_fail(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests must run in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


def find_postgres_bin_dir() -> Path:
    """The directory holding `initdb` and `pg_ctl`: PATH first, then Debian's versioned layout (newest)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(Path(path).parent.name) if Path(path).parent.name.isdigit() else 0,
        reverse=True,
    )
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise PostgresUnavailable(
        f"no initdb/pg_ctl found on PATH or in /usr/lib/postgresql/*/bin; {MISSING_HINT}"
    )


def _run_as_prefix() -> list[str]:
    """PostgreSQL refuses to run as root; as root, run its programs as the `postgres` system user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError as error:
        raise PostgresUnavailable(
            f"running as root and there is no '{SERVICE_ACCOUNT}' user; {MISSING_HINT}"
        ) from error
    # runuser lives in /usr/sbin, which a non-login root shell's PATH may lack.
    runuser = shutil.which(
        "runuser", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    )
    if runuser:
        return [runuser, "-u", SERVICE_ACCOUNT, "--"]
    raise PostgresUnavailable("running as root and `runuser` is missing (util-linux)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class PostgresServer:
    """One PostgreSQL cluster in `root`, listening on 127.0.0.1:`port` and a unix socket in `root`."""

    bin_dir: Path
    root: Path
    port: int
    run_as: list[str]

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def _run(self, *args: str, timeout_s: float = PG_CTL_TIMEOUT_S) -> None:
        command = [*self.run_as, str(self.bin_dir / args[0]), *args[1:]]
        # cwd: the postgres user may not be allowed into the test process's working directory.
        result = subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if result.returncode != 0:
            log_tail = self.log_path.read_text()[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"server log:\n{log_tail}"
            )

    def init(self) -> None:
        password_file = self.root / "superuser-password"
        password_file.write_text(SUPERUSER_PASSWORD + "\n")
        self.socket_dir.mkdir()
        self._chown_to_service_account()
        self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--pwfile",
            str(password_file),
            "--auth-local=trust",
            # Password authentication on loopback, as a deployed service would use.
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        password_file.unlink()
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                # Several uvicorn workers, each with a connection pool, plus the tests themselves.
                "max_connections = 200\n"
                # Throwaway data: durability only costs time here.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )

    def _chown_to_service_account(self) -> None:
        if not self.run_as:
            return
        account = pwd.getpwnam(SERVICE_ACCOUNT)
        for path in (self.root, self.socket_dir, *self.root.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)

    def start(self) -> None:
        """Start and wait until it accepts connections (`pg_ctl -w`)."""
        self._run(
            "pg_ctl", "start", "--pgdata", str(self.data_dir), "--log", str(self.log_path), "--wait",
            "--timeout", str(PG_CTL_TIMEOUT_S),
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects clients and shuts down cleanly, as an operator's restart would."""
        self._run(
            "pg_ctl", "stop", "--pgdata", str(self.data_dir), "--mode", mode, "--wait",
            "--timeout", str(PG_CTL_TIMEOUT_S),
        )  # fmt: skip

    def is_running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    @contextlib.contextmanager
    def admin_connection(self, dbname: str = "postgres") -> Iterator[psycopg2.extensions.connection]:
        """A superuser connection in autocommit mode, closed on exit.

        Not psycopg2's `with connection:`, which opens a transaction even in autocommit mode (2.9+),
        where CREATE/DROP DATABASE cannot run, and does not close the connection.
        """
        connection = psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=SUPERUSER_PASSWORD,
            dbname=dbname,
            connect_timeout=10,
        )
        connection.autocommit = True
        try:
            yield connection
        finally:
            connection.close()

    def create_app_role(self, user: str = APP_USER, password: str = APP_PASSWORD) -> None:
        """A login role without superuser rights: the service must work with what an operator grants."""
        with self.admin_connection() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
            if cursor.fetchone() is None:
                cursor.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(user)), (password,)
                )

    def create_database(self, owner: str = APP_USER) -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        with self.admin_connection() as connection, connection.cursor() as cursor:
            cursor.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner))
            )
        return name

    def drop_database(self, name: str) -> None:
        with self.admin_connection() as connection, connection.cursor() as cursor:
            # FORCE: a test that failed may leave the app's pooled connections open.
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def url(self, dbname: str, user: str = APP_USER, password: str = APP_PASSWORD) -> str:
        """The plain form users paste, with user and password URL-encoded as a URL requires."""
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/{dbname}"
        )


def start_postgres_server() -> PostgresServer:
    """initdb + start a new cluster in a fresh temp dir; raises PostgresUnavailable on this machine."""
    bin_dir = find_postgres_bin_dir()
    run_as = _run_as_prefix()
    root = Path(tempfile.mkdtemp(prefix="rl-maze-pg-"))
    server = PostgresServer(bin_dir=bin_dir, root=root, port=_free_port(), run_as=run_as)
    try:
        server.init()
        server.start()
        server.create_app_role()
    except BaseException:
        remove_postgres_server(server)
        raise
    return server


def remove_postgres_server(server: PostgresServer) -> None:
    try:
        if server.is_running():
            server.stop(mode="immediate")
    finally:
        shutil.rmtree(server.root, ignore_errors=True)


def _server_or_skip() -> PostgresServer:
    try:
        return start_postgres_server()
    except PostgresUnavailable as error:
        _skip_or_fail(str(error))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session; stopped and deleted at the end."""
    server = _server_or_skip()
    yield server
    remove_postgres_server(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database owned by the (non-superuser) app role, dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture
def disposable_postgres_server() -> Iterator[PostgresServer]:
    """A server of this test's own, free to stop and start (the shared one must stay up)."""
    server = _server_or_skip()
    yield server
    remove_postgres_server(server)
