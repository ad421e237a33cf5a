"""A real Ray cluster on this machine for tests: a head (no CPUs, so it trains nothing) and one worker
node with its own DATA_DIR, started with the `ray` CLI and torn down after.

Fixture (registered in tests/conftest.py): `ray_cluster` (module scope). Without Ray installed
(`pip install -r requirements-ray.txt`) it skips, except under CI (`CI` set), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, free_port

START_TIMEOUT_S = 120.0
WORKER_CPUS = 2
# Small object stores: the tests move no large objects, and /dev/shm is shared with other work.
NODE_OPTIONS = [
    "--node-ip-address=127.0.0.1",
    "--num-gpus=0",
    "--disable-usage-stats",
    "--object-store-memory=100000000",
    "--block",
]


class RayCluster:
    """`ray start --head` + one `ray start --address` worker node, each in its own process group."""

    def __init__(self, root: Path, worker_data_dir: Path) -> None:
        self.root = root
        self.worker_data_dir = worker_data_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.ray = str(Path(sys.executable).parent / "ray")
        # Ray's ports listen on every interface: a token of this cluster's own keeps others out, and
        # a token file left in ~/.ray by other Ray use on this machine plays no part.
        self.auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.log").open("ab") as log_file:
            return subprocess.Popen(
                [self.ray, "start", *args, *NODE_OPTIONS],
                cwd=PROJECT_ROOT,
                env={**os.environ, **self.auth_env, **env},
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # its own group: torn down with killpg, nothing else
            )

    def start(self) -> RayCluster:
        self.head = self._spawn(
            "head",
            [
                "--head",
                f"--port={self.port}",
                "--num-cpus=0",
                "--include-dashboard=false",  # the dashboard's Jobs API runs arbitrary code
                f"--temp-dir={self.root / 'ray'}",
            ],
            {},
        )
        self._wait_for_port()
        self.start_worker()
        return self

    def start_worker(self) -> None:
        """The node that trains: the project on its PYTHONPATH, and a data directory of its own."""
        self.worker_data_dir.mkdir(parents=True, exist_ok=True)
        env = {"DATA_DIR": str(self.worker_data_dir), "PYTHONPATH": str(PROJECT_ROOT)}
        self.worker = self._spawn("worker", [f"--address={self.address}", f"--num-cpus={WORKER_CPUS}"], env)

    def _wait_for_port(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.head is not None
            if self.head.poll() is not None:
                raise RuntimeError(f"ray head exited:\n{self.log_tail('head')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"ray head did not start:\n{self.log_tail('head')}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def task_processes(self, name: str) -> list[int]:
        """Pids of the worker node's processes running the Ray task `name` (titled `ray::name`)."""
        assert self.worker is not None
        ours = descendants(self.worker.pid)
        return [pid for pid in ours if _cmdline(pid).startswith(f"ray::{name}")]

    def stop(self) -> None:
        for process in (self.worker, self.head):
            if process is None:
                continue
            # Task workers put themselves in their own process groups: find them before the raylet goes.
            stragglers = descendants(process.pid)
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=5)  # the head's `ray start --block` may not exit on SIGTERM alone
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=15)
            for pid in stragglers:
                _kill_quietly(pid)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (no psutil)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _ray_or_skip() -> None:
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        reason = "Ray is not installed (pip install -r requirements-ray.txt -c constraints.txt)"
        if os.environ.get("CI"):
            pytest.fail(f"Ray tests must run in CI: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    _ray_or_skip()
    # A short root: Ray's unix socket paths must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="rayt-", dir="/tmp"))
    cluster = RayCluster(root, worker_data_dir=root / "worker-data")
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
