"""A real Ray cluster on this machine for tests, on loopback only: one node started with the `ray` CLI
(`ray start --head`), whose task workers get a DATA_DIR of their own, and torn down after.

Why one node: Ray replaces 127.0.0.1 with the machine's network address in what it advertises, so a
second node would talk to that address; the only switch that keeps every connection on 127.0.0.1
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, in the node's and the service's environment) also forbids other
nodes. The task workers are still separate processes with their own data directory, so nothing the
tests check can go through files shared with the service.

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
from training.executors.ray_cluster import RAY_LOOPBACK_ONLY_ENV

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
    """`ray start --head` (a node that trains, in its own process group) on a loopback port."""

    def __init__(self, root: Path, worker_data_dir: Path) -> None:
        self.root = root
        self.worker_data_dir = worker_data_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.worker: subprocess.Popen[bytes] | None = None  # the one node: head and worker
        self.ray = str(Path(sys.executable).parent / "ray")
        # Ray's ports listen on every interface: a token of this cluster's own keeps others out, and
        # a token file left in ~/.ray by other Ray use on this machine plays no part. The loopback
        # switch (module docstring) must be set for every Ray process, the service's included.
        self.auth_env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            RAY_LOOPBACK_ONLY_ENV: "0",
        }

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
        # Task workers inherit the node's environment: the project on their PYTHONPATH, and a data
        # directory that is not the service's.
        self.worker_data_dir.mkdir(parents=True, exist_ok=True)
        self.worker = self._spawn(
            "head",
            [
                "--head",
                f"--port={self.port}",
                f"--num-cpus={WORKER_CPUS}",
                "--include-dashboard=false",  # the dashboard's Jobs API runs arbitrary code
                f"--temp-dir={self.root / 'ray'}",
            ],
            {"DATA_DIR": str(self.worker_data_dir), "PYTHONPATH": str(PROJECT_ROOT)},
        )
        self._wait_for_port()
        return self

    def _wait_for_port(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.worker is not None
            if self.worker.poll() is not None:
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
        """Pids of the node's processes running the Ray task `name` (titled `ray::name`)."""
        assert self.worker is not None
        ours = descendants(self.worker.pid)
        return [pid for pid in ours if _cmdline(pid).startswith(f"ray::{name}")]

    def stop(self) -> None:
        process = self.worker
        if process is None:
            return
        # Task workers put themselves in their own process groups: find them before the raylet goes.
        stragglers = descendants(process.pid)
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=5)  # `ray start --block` may not exit on SIGTERM alone
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
