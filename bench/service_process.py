"""A real `uvicorn main:app` process for the benchmarks: start it, talk to it, wait until it is idle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.machine import log
from bench.process_cpu import tree_cpu_seconds
from core.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
FINAL_STATES = {"completed", "failed", "stopped", "interrupted"}
HTTP_TIMEOUT_S = 10.0

# The service's defaults, spelled out so that the caller's environment or a `.env` cannot change them.
SERVICE_DEFAULTS = {
    "DATABASE_URL": "",
    "MLFLOW_TRACKING_URI": "",
    "MLFLOW_ENABLED": "true",
    "PROGRESS_INTERVAL_S": "10",
    "HEARTBEAT_INTERVAL_S": "2",
    "HEARTBEAT_TIMEOUT_S": "30",
    "TORCH_THREADS": "1",
    "MAX_CONCURRENT_RUNS": "1",
    "LOG_LEVEL": "INFO",
    "LOG_JSON": "true",
    "EVAL_EPISODES": "0",  # evaluation runs after training (outside fps); skipping it only saves time
}
WARMUP_RUN: dict[str, Any] = {
    "algorithm": "PPO",
    "total_episodes": 2,
    "timesteps_per_episode": 128,
    "maze_size": 5,
    "n_envs": 4,
    "seed": 1,
}


def training_run(total_episodes: int, seed: int, timesteps_per_episode: int = 2048) -> dict[str, Any]:
    """A measured run: PPO on random 10x10 mazes, default n_envs (16)."""
    return {
        "algorithm": "PPO",
        "total_episodes": total_episodes,
        "timesteps_per_episode": timesteps_per_episode,
        "maze_size": 10,
        "maze_mode": "random",
        "seed": seed,
        "device": "cpu",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Service:
    """A real `uvicorn main:app` process on a loopback port, with its own temporary data directory.

    :param app: another ASGI app to serve instead (comparisons in bench_request_cost.py).
    :param uvicorn_args: extra uvicorn options, e.g. `--no-access-log`.
    :param ready_path: answers 200 once the app is up.
    """

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        executor: str = "thread",
        app: str = "main:app",
        uvicorn_args: Sequence[str] = (),
        ready_path: str = "/health",
    ) -> None:
        self.name = name
        self.env = {**SERVICE_DEFAULTS, **env, "EXECUTOR": executor}
        self.app, self.uvicorn_args, self.ready_path = app, list(uvicorn_args), ready_path
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-service-{name}-"))
        self.log_path = self.workdir / "service.log"
        self.process: subprocess.Popen[bytes] | None = None

    def keep_alive_client(self) -> KeepAliveClient:
        return KeepAliveClient(HOST, self.port)

    def ws_url(self, run_id: str) -> str:
        return f"ws://{HOST}:{self.port}/ws/training/{run_id}"

    def start(self, timeout_s: float = 120.0) -> None:
        env = {**os.environ, **self.env, "DATA_DIR": str(self.workdir / "data")}
        command = [sys.executable, "-m", "uvicorn"]
        # The keep-alive timeout `python main.py` uses (TIMEOUT_KEEP_ALIVE_S), for this CLI launch.
        keep_alive = str(Settings.model_fields["timeout_keep_alive_s"].default)
        command += [self.app, "--host", HOST, "--port", str(self.port), "--timeout-keep-alive", keep_alive]
        command += self.uvicorn_args
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                command, cwd=PROJECT_ROOT, env=env, stdout=log_file, stderr=log_file
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service {self.name} exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + self.ready_path, timeout=5, trust_env=False).status_code == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"service {self.name} did not become healthy:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, keep_log_at: str | None = None) -> None:
        """SIGTERM (the service saves its runs' models), SIGKILL after 20 s, then delete the data.

        :param keep_log_at: a path to copy the service's log to first.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        if keep_log_at and self.log_path.exists():
            shutil.copyfile(self.log_path, keep_log_at)
        shutil.rmtree(self.workdir, ignore_errors=True)


def http_client(service: Service, connections: int = 4) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=service.base_url, timeout=HTTP_TIMEOUT_S, limits=limits, trust_env=False
    )


async def start_run(http: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await http.post("/training/start", json=body)
    response.raise_for_status()
    return str(response.json()["experiment_id"])


async def wait_for_status(
    http: httpx.AsyncClient,
    run_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout_s: float,
    poll_s: float = 1.0,
) -> dict[str, Any]:
    """Poll the run's status (lightly) until `predicate` holds; raise with the last body after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await http.get(f"/training/status/{run_id}")
        response.raise_for_status()
        body = response.json()
        if predicate(body):
            return body
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"run {run_id} not there after {timeout_s:.0f} s; last status: {body}")


def settled(body: dict[str, Any]) -> bool:
    """The run ended and its after-training work (ONNX export) is over: nothing left to use the CPU."""
    onnx = body.get("onnx") or {}
    return body["status"] in FINAL_STATES and onnx.get("status") not in (None, "pending")


class KeepAliveClient:
    """One client's HTTP/1.1 keep-alive connection: GET, answers with Content-Length (uvicorn's JSON).

    A real TCP HTTP/1.1 client, but a small one: httpx costs several times more CPU per request, and the
    load generator shares the service's cores, so its CPU would be taken from the training it measures.
    A failure is raised (and counted by the caller); the next request opens a new connection.
    """

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(self._get(path), HTTP_TIMEOUT_S)
        except BaseException:
            await self.close()
            raise

    async def _get(self, path: str) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._streams
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
        body = await reader.readexactly(int(headers["content-length"]))
        if headers.get("connection") == "close":
            await self.close()
        return int(head[0].split(" ", 2)[1]), body

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def wait_until_idle(service: Service, timeout_s: float = 180.0, max_cores: float = 0.05) -> None:
    """Wait until the service and its descendants use < `max_cores` for 2 s in a row, so that work left
    over from one trial (ONNX export, MLflow uploads) cannot slow the next one down."""
    deadline = time.monotonic() + timeout_s
    quiet_s = 0
    while quiet_s < 2 and time.monotonic() < deadline:
        before = tree_cpu_seconds(service.pid)
        await asyncio.sleep(1.0)
        busy = tree_cpu_seconds(service.pid) - before >= max_cores
        quiet_s = 0 if busy else quiet_s + 1
    if quiet_s < 2:
        log(f"service {service.name} still busy after {timeout_s:.0f} s; going on")


async def warm_up(service: Service) -> str:
    """One tiny run: first-use costs (imports, MLflow store creation) land outside the measurements.
    Returns the run's id."""
    async with http_client(service) as http:
        run_id = await start_run(http, WARMUP_RUN)
        await wait_for_status(http, run_id, settled, timeout_s=300)
    await wait_until_idle(service)
    return run_id
