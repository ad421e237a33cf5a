"""Starts the tests' single-worker services as forks of a process that has already imported their libraries.

A service process spends ~5-6 s of CPU importing torch, Stable-Baselines3, MLflow, pandas, FastAPI...
before it serves, and the suite starts dozens of them. The zygote (one per pytest worker) imports those
third-party libraries once and forks a child per service; the child then runs uvicorn's own command line
(what `python -m uvicorn main:app ...` runs) with the service's environment, working directory and log
file, and imports the project's own modules itself, so the service reads its settings as a fresh process
does. This is gunicorn's `--preload`, limited to libraries. A service with several uvicorn workers forks
them from the child too, where uvicorn would spawn fresh interpreters. The child is a real process: it
serves on a real port, and SIGTERM and SIGKILL reach it as they would a `subprocess.Popen` one.

Protocol, over a Unix socket: the client sends one JSON line ``{"argv", "env", "cwd", "log"}``; the
zygote answers ``"<pid>\\n"`` once it has forked and ``"exit <code>\\n"`` when it has reaped the child
(code as `subprocess` gives it: negative for a signal), then closes the connection.

Run as ``python -m tests.service_zygote SOCKET_PATH``; it prints ``ready`` once it listens and exits when
the process that started it has gone.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import multiprocessing
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

# What `import main` imports from outside the project, heaviest first (``python -X importtime -c "import
# main"``). Libraries only: nothing here reads the service's settings.
PRELOADED = (
    "torch",
    "stable_baselines3",
    "gymnasium",
    "mlflow",
    "mlflow.tracking",
    "mlflow.entities",
    "mlflow.artifacts",
    "pandas",
    "scipy",
    "onnxruntime",
    "optuna",
    "sqlalchemy",
    "sqlalchemy.orm",
    "alembic",
    "alembic.command",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvicorn.main",
    "httpx",
    "structlog",
    "pydantic",
    "pydantic_settings",
    "prometheus_client",
    "yaml",
    "numpy",
)


def _preload() -> None:
    for name in PRELOADED:
        with contextlib.suppress(ImportError):  # not installed here: the child imports what it needs
            importlib.import_module(name)


def _serve_child(request: dict[str, Any]) -> int:
    """In the forked child: become the service process the request describes; returns its exit code."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the zygote's own handler is not the service's
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]  # as `python -m` sets it: the working directory first
    sys.argv = list(request["argv"])
    if "--workers" in sys.argv:
        # uvicorn starts its workers with multiprocessing's "spawn", which would import every library
        # again in each of them; forked, they start from this process's imports too. The supervisor
        # does not load the app, so each worker still imports the project and runs its start-up itself.
        import uvicorn._subprocess

        uvicorn._subprocess.spawn = multiprocessing.get_context("fork")  # type: ignore[assignment]
    try:
        runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
    except SystemExit as end:
        if end.code is None or isinstance(end.code, int):
            return end.code or 0
        print(end.code, file=sys.stderr)
        return 1
    except BaseException:  # the child reports any failure in its log and exit code
        traceback.print_exc()
        return 1
    return 0


def _leave(code: int) -> None:
    """End the forked child as Python ends a process, short of the C libraries' exit handlers.

    Non-daemon threads are joined and `atexit` runs as at any interpreter exit; then `os._exit`, as
    multiprocessing ends its forked children. A library the zygote loaded may keep C-level state that
    its exit handler cannot tear down in a fork: onnxruntime's waits forever on a condition variable in
    a child that has forked uvicorn workers itself.
    """
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(code)


def serve(path: str) -> None:
    """Listen on ``path`` and fork a service per request until the parent process goes away."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    _preload()
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection that asked for it
    forked = 0
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    while os.getppid() == parent and not stopping:
        readable, _, _ = select.select([listener], [], [], 0.1)
        if readable:
            connection, _ = listener.accept()
            with connection.makefile("rb") as lines:
                request = json.loads(lines.readline())
            pid = os.fork()
            if pid == 0:  # the child: leave the zygote's sockets and loop behind
                listener.close()
                connection.close()
                for other in waiting.values():
                    other.close()
                _leave(_serve_child(request))
            connection.sendall(f"{pid}\n".encode())
            waiting[pid] = connection
            forked += 1
        while waiting:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            connection = waiting.pop(pid)
            with contextlib.suppress(OSError):  # the client has gone; nobody is waiting on this one
                connection.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            connection.close()
    listener.close()
    print(f"service zygote: {forked} services forked", file=sys.stderr, flush=True)


class ZygoteChild:
    """A service forked by the zygote, with the part of `subprocess.Popen`'s interface the tests use."""

    def __init__(self, connection: socket.socket, pid: int, args: list[str]) -> None:
        self._connection = connection
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def _read_exit(self, timeout: float | None) -> None:
        if self.returncode is not None:
            return
        readable, _, _ = select.select([self._connection], [], [], timeout)
        if not readable:
            return
        line = self._connection.makefile("rb").readline().decode().strip()
        # "exit <code>", or nothing if the zygote itself died: the child is gone with it or orphaned.
        self.returncode = int(line.split()[1]) if line.startswith("exit ") else -int(signal.SIGKILL)
        self._connection.close()

    def poll(self) -> int | None:
        self._read_exit(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._read_exit(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The zygote process of this pytest worker, started on first use."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "zygote.sock")
        self.process: subprocess.Popen[bytes] | None = None

    def _ensure_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        Path(self.path).unlink(missing_ok=True)
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.service_zygote", self.path], cwd=root, stdout=subprocess.PIPE
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError(f"the service zygote did not start (exit {self.process.wait(timeout=10)})")

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> ZygoteChild:
        """Fork a child that runs ``python -m uvicorn`` with ``argv[1:]`` as its arguments.

        :param argv: ``["uvicorn", "main:app", ...]``, as ``sys.argv`` of ``python -m uvicorn main:app ...``.
        """
        self._ensure_running()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(self.path)
        request = {"argv": argv, "env": env, "cwd": str(cwd), "log": str(log)}
        connection.sendall((json.dumps(request) + "\n").encode())
        pid = b""
        deadline = time.monotonic() + 30
        while not pid.endswith(b"\n"):
            if time.monotonic() > deadline:
                raise RuntimeError("the service zygote did not fork")
            chunk = connection.recv(1)
            if not chunk:
                raise RuntimeError("the service zygote closed the connection")
            pid += chunk
        return ZygoteChild(connection, int(pid), argv)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


if __name__ == "__main__":
    serve(sys.argv[1])
