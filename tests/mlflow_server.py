"""A real `mlflow server` on a loopback port, for tests of tracking against a tracking server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

START_TIMEOUT_S = 180.0
STOP_GRACE_S = 5.0


class MlflowServer:
    """`mlflow server` with a SQLite backend and served artifacts, in its own directory."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "mlflow-server.log"

    def start(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        mlflow = Path(sys.executable).parent / "mlflow"
        command = [
            str(mlflow), "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        # MLflow's job runner (7 huey consumer processes, for its GenAI features) is not needed to track
        # runs; it slowed every start by seconds and took CPU from the tests.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log_path.open("ab") as log_file:
            # Its own process group: `mlflow server` runs the web server as a child process, which a
            # kill of the CLI alone would leave serving.
            self.process = subprocess.Popen(
                command, cwd=self.root, stdout=log_file, stderr=log_file, env=env, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Graceful stop; killed after STOP_GRACE_S (it waits for clients' open connections, e.g. a
        service still running, to close: every request's data is committed by then anyway)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_GRACE_S)
        self.kill()  # whatever of the group is left

    def kill(self) -> None:
        """A crash: SIGKILL to the CLI and the web server it runs, no goodbye to the clients."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture
def private_mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A server only this test uses, so it can stop and restart it."""
    server = MlflowServer(tmp_path / "mlflow-server").start()
    yield server
    server.stop()
