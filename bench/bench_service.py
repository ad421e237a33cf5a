"""Service-level benchmarks against real ``uvicorn main:app`` processes on 127.0.0.1.

1. Tracking + WebSocket overhead (issue 4): the final ``fps`` of one PPO run on a service with MLflow
   tracking on, ``PROGRESS_INTERVAL_S=1`` and 100 WebSocket clients watching the whole run, against the
   same run on a service with ``MLFLOW_ENABLED=false``, the default interval and no clients. Both services
   live for the whole benchmark (warmed up by a tiny run each); trials alternate between them.
2. Load (issue 8): two runs train (``MAX_CONCURRENT_RUNS=2``) while 50 clients poll
   ``GET /training/status/{id}`` and 100 WebSocket clients listen, in windows alternating with unloaded
   windows on the same service and the same runs. Training fps per window comes from the runs' own
   progress snapshots (``timesteps`` and ``updated_at``), read by a 1 Hz probe in both kinds of window.
   Before the runs start, the service CPU per 1000 status requests is measured on the idle service.

Usage: ``.venv/bin/python -m bench.bench_service [--quick] [--no-write]``

Prints a Markdown report and appends it as the "## Service load" section of ``bench/RESULTS.md``
(replacing an earlier "## Service load" section, leaving every other section as it is).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime
import gc
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

from bench.results_file import RESULTS_FILE, write_section
from core.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SECTION_HEADING = "## Service load"

HOST = "127.0.0.1"
FINAL_STATES = {"completed", "failed", "stopped", "interrupted"}
WS_CLIENTS = 100
POLL_CLIENTS = 50
POLL_INTERVAL_S = 1.0  # each polling client asks once a second (a dashboard's rate), on a fixed schedule
PROBE_INTERVAL_S = 1.0
HTTP_TIMEOUT_S = 10.0
OVERHEAD_TARGET = 0.95
LOAD_FPS_TARGET = 0.90
P99_TARGET_MS = 100.0
STATUS_COST_REQUESTS = 2000
STATUS_COST_CONNECTIONS = 10

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


@dataclass(frozen=True)
class Mode:
    name: str
    overhead_episodes: int  # x 2048 steps per measured run
    overhead_pairs: int
    load_window_s: float
    load_pairs: int


# Full mode: 4 load pairs, because fps drifted by up to 30% between unloaded windows of one invocation
# (measured 2026-11-26): with 2 pairs one drifting window decides the median.
FULL = Mode("full", overhead_episodes=10, overhead_pairs=3, load_window_s=60.0, load_pairs=4)
QUICK = Mode("quick", overhead_episodes=4, overhead_pairs=1, load_window_s=15.0, load_pairs=1)
# Load-test runs use short iterations (512 steps = 32 per env) so that a window spans many rollout/update
# cycles: fps from progress snapshots is then not at the mercy of where PPO's update phase falls.
LOAD_RUN_STEPS_PER_EPISODE = 512


@dataclass(frozen=True)
class Options:
    mode: Mode
    executor: str  # EXECUTOR of the services: "thread" (the default) or "ray" (a private local Ray)
    benchmarks: tuple[str, ...]


# --- a live service -------------------------------------------------------------------------------


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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat_path: Path) -> float:
    """utime + stime of a process or thread, from /proc/.../stat."""
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def parent_pids() -> dict[int, int]:
    """pid → parent pid of every live process."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants: with EXECUTOR=process the runs train in the service's
    grandchildren (a fork server's children); MLflow's ONNX model logging starts a Python subprocess."""
    children: dict[int, list[int]] = {}
    for child, parent in parent_pids().items():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (a process that exited in between is not counted)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(Path(f"/proc/{member}/stat"))
    return total


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


# --- WebSocket listeners --------------------------------------------------------------------------


@dataclass
class ListenerResult:
    messages: int = 0
    finals: int = 0
    close_code: int | None = None
    error: str | None = None


async def listen(url: str, until: float) -> ListenerResult:
    """Receive messages until the server closes normally or the monotonic deadline `until` passes."""
    result = ListenerResult()
    try:
        async with connect(url, proxy=None, open_timeout=30, close_timeout=5) as ws:
            while (remaining := until - time.monotonic()) > 0:
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=remaining)
                except TimeoutError:
                    break
                except ConnectionClosedOK as closed:
                    result.close_code = closed.rcvd.code if closed.rcvd else None
                    break
                message = json.loads(raw)
                result.messages += 1
                result.finals += message.get("type") == "final"
    except Exception as error:  # counted and reported, never hidden
        result.error = f"{type(error).__name__}: {error}"[:200]
    return result


@dataclass(frozen=True)
class WsStats:
    clients: int
    messages: int
    min_messages: int
    clients_without_messages: int
    errors: int
    error_kinds: dict[str, int]
    finals: int
    normal_closes: int

    @classmethod
    def of(cls, results: Sequence[ListenerResult]) -> WsStats:
        errors = [r.error for r in results if r.error]
        return cls(
            clients=len(results),
            messages=sum(r.messages for r in results),
            min_messages=min((r.messages for r in results), default=0),
            clients_without_messages=sum(r.messages == 0 for r in results),
            errors=len(errors),
            error_kinds=dict(Counter(e.split(":")[0] for e in errors)),
            finals=sum(r.finals > 0 for r in results),
            normal_closes=sum(r.close_code == 1000 for r in results),
        )


def listeners(service: Service, run_ids: Sequence[str], until: float) -> list[asyncio.Task[ListenerResult]]:
    """WS_CLIENTS listeners, spread over the runs."""
    return [
        asyncio.create_task(listen(service.ws_url(run_ids[i % len(run_ids)]), until))
        for i in range(WS_CLIENTS)
    ]


def listen_in_this_process(urls: Sequence[str], until: float) -> tuple[list[ListenerResult], float]:
    """Run in a child process (see `ListenerProcess`): every listener until `until` (monotonic, the same
    clock in every process). Returns their results and this process's CPU seconds."""
    started = time.process_time()

    async def listen_all() -> list[ListenerResult]:
        return list(await asyncio.gather(*(listen(url, until) for url in urls)))

    results = asyncio.run(listen_all())
    return results, time.process_time() - started


def _prepare_listener_process() -> None:
    gc.collect()
    gc.freeze()  # as in the main process: its own full collections are not the service's latency


class ListenerProcess:
    """The load test's WebSocket clients, in a process of their own, as separate clients would be.

    In the pollers' process, 100 simultaneous WebSocket handshakes kept its event loop busy for a
    quarter of a second, and the status answers waiting to be read meanwhile were timed as slow
    answers. Started (and its imports done) before any window, so a window starts on time.
    """

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with an event loop
        self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context)
        self._pool.submit(_prepare_listener_process).result(timeout=120)

    async def listen(self, urls: Sequence[str], until: float) -> tuple[list[ListenerResult], float]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, listen_in_this_process, list(urls), until)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


# --- 1. tracking + WebSocket overhead -------------------------------------------------------------


@dataclass(frozen=True)
class OverheadTrial:
    featured: bool
    fps: float
    timesteps: int
    ws: WsStats | None


async def overhead_trial(service: Service, featured: bool, body: dict[str, Any]) -> OverheadTrial:
    timeout_s = 1200.0
    async with http_client(service) as http:
        run_id = await start_run(http, body)
        tasks = listeners(service, [run_id], time.monotonic() + timeout_s) if featured else []
        done = await wait_for_status(http, run_id, lambda s: s["status"] in FINAL_STATES, timeout_s)
        results = [await asyncio.wait_for(task, timeout=60) for task in tasks]
        if done["status"] != "completed" or not done.get("fps"):
            raise RuntimeError(f"measured run did not complete: {done}")
        await wait_for_status(http, run_id, settled, timeout_s=300)
    await wait_until_idle(service)
    return OverheadTrial(
        featured, float(done["fps"]), int(done["timesteps"]), WsStats.of(results) if featured else None
    )


@dataclass(frozen=True)
class OverheadResult:
    trials: list[OverheadTrial]

    def fps(self, featured: bool) -> list[float]:
        return [t.fps for t in self.trials if t.featured == featured]

    def ratios(self) -> list[float]:
        return [f / b for f, b in zip(self.fps(True), self.fps(False), strict=True)]


async def run_overhead(options: Options) -> OverheadResult:
    mode = options.mode
    featured = Service("tracked", {"PROGRESS_INTERVAL_S": "1"}, options.executor)
    plain = Service("plain", {"MLFLOW_ENABLED": "false"}, options.executor)
    trials: list[OverheadTrial] = []
    try:
        for service in (featured, plain):
            service.start()
            await warm_up(service)
        for pair in range(mode.overhead_pairs):
            order = [(featured, True), (plain, False)]
            for service, is_featured in order if pair % 2 == 0 else order[::-1]:
                body = training_run(mode.overhead_episodes, seed=100 + pair)
                trial = await overhead_trial(service, is_featured, body)
                log(f"overhead pair {pair}: {'tracked+ws' if is_featured else 'plain'} fps {trial.fps:.0f}")
                trials.append(trial)
    finally:
        featured.stop()
        plain.stop()
    return OverheadResult(trials)


# --- 2. load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuUse:
    """Cores used on average over a window (CPU seconds / wall seconds)."""

    service: float
    event_loop: float  # the service's main thread: uvicorn's event loop
    load_generator: float  # this benchmark: pollers and probe, plus the WebSocket clients' process


class CpuMeter:
    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._main_thread = Path(f"/proc/{pid}/task/{pid}/stat")
        self._start = self._now()

    def _now(self) -> tuple[float, float, float, float]:
        return (
            time.monotonic(),
            tree_cpu_seconds(self._pid),
            cpu_seconds(self._main_thread),
            time.process_time(),
        )

    def read(self, other_client_cpu_s: float = 0.0) -> CpuUse:
        """:param other_client_cpu_s: CPU seconds of load-generator processes other than this one."""
        end = self._now()
        wall = end[0] - self._start[0]
        service, loop, client = ((end[i] - self._start[i]) / wall for i in (1, 2, 3))
        return CpuUse(service, loop, client + other_client_cpu_s / wall)


@dataclass
class PollStats:
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


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


async def timed_status(client: KeepAliveClient, run_id: str, stats: PollStats) -> dict[str, Any] | None:
    started = time.perf_counter()
    try:
        status, raw = await client.get(f"/training/status/{run_id}")
    except Exception as error:
        stats.errors[type(error).__name__] += 1
        return None
    stats.latencies_ms.append((time.perf_counter() - started) * 1000)
    if status != 200:
        stats.errors[f"HTTP {status}"] += 1
        return None
    body: dict[str, Any] = json.loads(raw)  # as a real client would; also checks the answer is whole
    return body


async def poller(
    client: KeepAliveClient, run_ids: Sequence[str], offset_s: float, until: float, stats: PollStats
) -> None:
    """One client: a status request every POLL_INTERVAL_S on a fixed schedule (slow answers do not
    lower the offered rate), alternating between the runs."""
    next_at = time.monotonic() + offset_s
    index = 0
    while next_at < until:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await timed_status(client, run_ids[index % len(run_ids)], stats)
        index += 1
        next_at = max(next_at + POLL_INTERVAL_S, time.monotonic())
    await client.close()


Samples = dict[str, list[tuple[float, int]]]


async def probe(client: KeepAliveClient, run_ids: Sequence[str], until: float, stats: PollStats) -> Samples:
    """Read each run's latest progress snapshot once a second: (updated_at as epoch s, timesteps)."""
    samples: Samples = {run_id: [] for run_id in run_ids}
    while time.monotonic() < until:
        for run_id in run_ids:
            body = await timed_status(client, run_id, stats)
            if body is not None and body.get("updated_at"):
                stamp = datetime.datetime.fromisoformat(body["updated_at"]).timestamp()
                samples[run_id].append((stamp, int(body["timesteps"])))
        await asyncio.sleep(PROBE_INTERVAL_S)
    await client.close()
    return samples


def snapshot_fps(points: list[tuple[float, int]]) -> float | None:
    """Steps per second between the first and the last distinct snapshot the probe saw."""
    distinct = sorted(set(points))
    if len(distinct) < 2 or distinct[-1][0] <= distinct[0][0]:
        return None
    (t0, s0), (t1, s1) = distinct[0], distinct[-1]
    return (s1 - s0) / (t1 - t0)


@dataclass(frozen=True)
class LoadWindow:
    loaded: bool
    run_fps: list[float]
    polls: PollStats
    probe: PollStats
    ws: WsStats | None
    cpu: CpuUse

    @property
    def fps(self) -> float:
        """Mean fps of the runs training at once."""
        return statistics.fmean(self.run_fps)


async def load_window(
    service: Service, run_ids: Sequence[str], loaded: bool, seconds: float, listener: ListenerProcess
) -> LoadWindow:
    until = time.monotonic() + seconds
    polls, probe_stats = PollStats(), PollStats()
    meter = CpuMeter(service.pid)
    probe_task = asyncio.create_task(probe(service.keep_alive_client(), run_ids, until, probe_stats))
    urls = [service.ws_url(run_ids[i % len(run_ids)]) for i in range(WS_CLIENTS)]
    ws_task = asyncio.create_task(listener.listen(urls, until)) if loaded else None
    poll_tasks = [
        asyncio.create_task(
            poller(service.keep_alive_client(), run_ids, POLL_INTERVAL_S * i / POLL_CLIENTS, until, polls)
        )
        for i in range(POLL_CLIENTS if loaded else 0)
    ]
    samples = await asyncio.wait_for(probe_task, timeout=seconds + 60)
    await asyncio.wait_for(asyncio.gather(*poll_tasks), timeout=60)
    ws_results, listener_cpu_s = await asyncio.wait_for(ws_task, timeout=60) if ws_task else ([], 0.0)
    cpu = meter.read(listener_cpu_s)
    run_fps = [snapshot_fps(samples[run_id]) for run_id in run_ids]
    if any(value is None for value in run_fps):
        raise RuntimeError(f"no progress seen in a {seconds:.0f} s window: {samples}")
    measured = [value for value in run_fps if value is not None]
    ws = WsStats.of(ws_results) if loaded else None
    return LoadWindow(loaded, measured, polls, probe_stats, ws, cpu)


@dataclass(frozen=True)
class StatusCost:
    """Service CPU per status request with nothing else running: robust even on a noisy machine."""

    requests: int
    service_cpu_s: float
    load_generator_cpu_s: float
    wall_s: float

    def per_1000(self, cpu_s: float) -> float:
        return 1000 * cpu_s / self.requests


async def measure_status_cost(service: Service, run_id: str) -> StatusCost:
    """STATUS_COST_REQUESTS answers to `GET /training/status/{run_id}` over STATUS_COST_CONNECTIONS
    keep-alive connections, each sending its next request when the last is answered."""
    clients = [service.keep_alive_client() for _ in range(STATUS_COST_CONNECTIONS)]
    path = f"/training/status/{run_id}"

    async def ask(client: KeepAliveClient, count: int) -> None:
        for _ in range(count):
            status, _ = await client.get(path)
            if status != 200:
                raise RuntimeError(f"status request answered {status}")
        await client.close()

    await asyncio.gather(*(ask(client, 20) for client in clients))  # connections open, code paths warm
    clients = [service.keep_alive_client() for _ in range(STATUS_COST_CONNECTIONS)]
    stat = Path(f"/proc/{service.pid}/stat")
    wall, cpu, own = time.monotonic(), cpu_seconds(stat), time.process_time()
    per_client = STATUS_COST_REQUESTS // STATUS_COST_CONNECTIONS
    await asyncio.gather(*(ask(client, per_client) for client in clients))
    return StatusCost(
        per_client * STATUS_COST_CONNECTIONS,
        cpu_seconds(stat) - cpu,
        time.process_time() - own,
        time.monotonic() - wall,
    )


@dataclass(frozen=True)
class LoadResult:
    windows: list[LoadWindow]
    window_s: float
    status_cost: StatusCost

    def of(self, loaded: bool) -> list[LoadWindow]:
        return [w for w in self.windows if w.loaded == loaded]

    def ratios(self) -> list[float]:
        return [a.fps / b.fps for a, b in zip(self.of(True), self.of(False), strict=True)]

    def latencies_ms(self) -> list[float]:
        return [x for w in self.of(True) for x in w.polls.latencies_ms]

    def errors(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for window in self.windows:
            total += window.polls.errors + window.probe.errors
        return total


async def run_load(options: Options) -> LoadResult:
    mode = options.mode
    env = {"MAX_CONCURRENT_RUNS": "2", "PROGRESS_INTERVAL_S": "1"}
    service = Service("load", env, options.executor)
    windows: list[LoadWindow] = []
    listener = ListenerProcess()
    try:
        service.start()
        # This process's own garbage collections would show up as service latency: a full one walked
        # ~150k objects (imports, clients) in 85 ms, measured in the middle of a burst of WebSocket
        # connects. Objects alive now (modules, the service handle) are left out of them.
        gc.collect()
        gc.freeze()
        warm_up_run = await warm_up(service)
        status_cost = await measure_status_cost(service, warm_up_run)
        log(f"status cost: {status_cost.per_1000(status_cost.service_cpu_s):.2f} CPU-s / 1000 requests")
        async with http_client(service) as http:
            body = {**training_run(50_000, 0, LOAD_RUN_STEPS_PER_EPISODE)}
            run_ids = [await start_run(http, {**body, "seed": 200 + i}) for i in range(2)]
            for run_id in run_ids:
                await wait_for_status(http, run_id, lambda s: s["timesteps"] >= 2048, timeout_s=300)
        for pair in range(mode.load_pairs):
            for loaded in (False, True) if pair % 2 == 0 else (True, False):
                window = await load_window(service, run_ids, loaded, mode.load_window_s, listener)
                log(f"load pair {pair}: {'loaded' if loaded else 'unloaded'} fps/run {window.fps:.0f}")
                windows.append(window)
                await asyncio.sleep(2)
    finally:
        service.stop()
        listener.close()
    return LoadResult(windows, mode.load_window_s, status_cost)


# --- report ---------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{datetime.datetime.now(datetime.UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def machine_line() -> str:
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, no GPU. Python {platform.python_version()}, "
        f"torch {version('torch')}, stable-baselines3 {version('stable-baselines3')}, "
        f"mlflow {version('mlflow')}, fastapi {version('fastapi')}, uvicorn {version('uvicorn')}, "
        f"websockets {version('websockets')}, httpx {version('httpx')}."
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def overhead_report(result: OverheadResult, mode: Mode) -> list[str]:
    ratio = statistics.median(result.ratios())
    ws_trials = [t.ws for t in result.trials if t.ws is not None]
    ws_ok = all(w.clients_without_messages == 0 and w.errors == 0 for w in ws_trials)
    steps = mode.overhead_episodes * 2048
    lines = [
        "### 1. Tracking + WebSocket overhead (issue 4)",
        "",
        f"One PPO run per trial: maze 10x10, random mode, {steps} steps, 16 envs, device cpu. "
        "A = MLflow tracking on (local SQLite store), `PROGRESS_INTERVAL_S=1`, "
        f"{WS_CLIENTS} WebSocket clients on `/ws/training/{{id}}` from right after the start until the final "
        "message. B = `MLFLOW_ENABLED=false`, default interval (10 s), no clients. Both services run for "
        f"the whole benchmark, warmed up by a tiny run; {len(result.trials) // 2} A/B pairs, order "
        "alternating. fps = the run's final `fps` (steps / training time, eval and ONNX export excluded).",
        "",
        "| pair | A fps (tracked + 100 WS) | B fps (plain) | A/B | WS msgs (min/client) | WS errors | "
        "clients w/o msgs | final + close 1000 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    featured = [t for t in result.trials if t.featured]
    for pair, (a, b) in enumerate(zip(featured, result.fps(False), strict=True)):
        ws = a.ws
        assert ws is not None
        lines.append(
            f"| {pair} | {a.fps:.0f} | {b:.0f} | {a.fps / b:.3f} | {ws.messages} ({ws.min_messages}) | "
            f"{ws.errors} {ws.error_kinds or ''} | {ws.clients_without_messages} | "
            f"{ws.finals}/{ws.normal_closes} of {ws.clients} |"
        )
    lines += [
        "",
        f"Median A/B fps ratio: **{ratio:.3f}** "
        f"(target >= {OVERHEAD_TARGET}: {verdict(ratio >= OVERHEAD_TARGET)}). "
        f"Median fps A {statistics.median(result.fps(True)):.0f}, "
        f"B {statistics.median(result.fps(False)):.0f}. "
        f"Every client got messages and none errored: {verdict(ws_ok)}.",
    ]
    return lines


def window_row(window: LoadWindow) -> str:
    if window.loaded:
        kind, stats, ws = "loaded", window.polls, window.ws
        count = f"{len(stats.latencies_ms)}"
    else:
        kind, stats, ws = "unloaded", window.probe, None
        count = f"{len(stats.latencies_ms)} (probe)"
    latency = " | ".join(f"{percentile(stats.latencies_ms, p):.1f}" for p in (50, 95, 99))
    ws_cells = f"{ws.messages} ({ws.min_messages}) | {ws.errors}" if ws else "- | -"
    cpu = window.cpu
    return (
        f"| {kind} | {window.fps:.0f} | {count} | {latency} | {sum(stats.errors.values())} | {ws_cells} | "
        f"{cpu.service:.2f} / {cpu.event_loop:.2f} / {cpu.load_generator:.2f} |"
    )


def status_cost_line(cost: StatusCost) -> str:
    return (
        f"Status request cost, before the runs start (service idle): {cost.requests} "
        f"`GET /training/status/{{id}}` over {STATUS_COST_CONNECTIONS} keep-alive connections, each asking "
        f"again when answered: **{cost.per_1000(cost.service_cpu_s):.2f} CPU-s of the service per 1000 "
        f"requests** (load generator {cost.per_1000(cost.load_generator_cpu_s):.2f}), "
        f"{cost.requests / cost.wall_s:.0f} requests/s."
    )


def load_report(result: LoadResult) -> list[str]:
    latencies = result.latencies_ms()
    p50, p95, p99 = (percentile(latencies, p) for p in (50, 95, 99))
    errors = result.errors()
    ws = [w.ws for w in result.of(True) if w.ws is not None]
    ws_errors = sum(w.errors for w in ws)
    ws_silent = sum(w.clients_without_messages for w in ws)
    ratio = statistics.median(result.ratios())
    zero_errors = not errors and ws_errors == 0 and ws_silent == 0
    return [
        "### 2. Load (issue 8)",
        "",
        "Two PPO runs (maze 10x10, random, 16 envs, "
        f"{LOAD_RUN_STEPS_PER_EPISODE} steps per iteration, cpu) train at once (`MAX_CONCURRENT_RUNS=2`, "
        "`PROGRESS_INTERVAL_S=1`, MLflow on). Loaded window: "
        f"{POLL_CLIENTS} clients each `GET /training/status/{{id}}` once every {POLL_INTERVAL_S:.0f} s "
        "(fixed schedule, staggered; each on its own HTTP/1.1 keep-alive connection, a minimal asyncio "
        "client in this process) and "
        f"{WS_CLIENTS} WebSocket clients (50 per run, in a second process of this benchmark, connecting "
        "together at the window's start) listen; unloaded window: nothing but a 1 Hz probe "
        f"per run, which also runs in loaded windows. {result.window_s:.0f} s windows, "
        f"{len(result.windows) // 2} pair(s), order alternating, same service and runs throughout. fps per "
        "window = steps / time between the first and last progress snapshot seen (mean of both runs). "
        "CPU = cores used on average in the window (CPU s / wall s) by the service process and its "
        "child processes, by its event-loop thread, and by the load generator (this benchmark's two "
        "processes).",
        "",
        status_cost_line(result.status_cost),
        "",
        "| window | fps/run (mean of 2) | status requests | p50 ms | p95 ms | p99 ms | errors | "
        "WS msgs (min/client) | WS errors | CPU service / event loop / load generator |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(window_row(window) for window in result.windows),
        "",
        f"Loaded windows, all together: {len(latencies)} status requests "
        f"(offered: {POLL_CLIENTS / POLL_INTERVAL_S:.0f}/s), p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
        f"p99 **{p99:.1f} ms** (target < {P99_TARGET_MS:.0f} ms: {verdict(p99 < P99_TARGET_MS)}); "
        f"HTTP errors {sum(errors.values())} {dict(errors) or ''}, WebSocket messages "
        f"{sum(w.messages for w in ws)}, WebSocket errors {ws_errors}, clients without messages {ws_silent} "
        f"(zero errors: {verdict(zero_errors)}).",
        f"Median loaded/unloaded fps ratio: **{ratio:.3f}** (target >= {LOAD_FPS_TARGET}: "
        f"{verdict(ratio >= LOAD_FPS_TARGET)}).",
    ]


def report(
    options: Options,
    overhead: OverheadResult | None,
    load: LoadResult | None,
    started: datetime.datetime,
    loads: list[str],
) -> str:
    command = " ".join(["-m bench.bench_service", *options_args(options)])
    experiment = [f"Services run with `EXECUTOR={options.executor}` ({EXECUTOR_NOTES[options.executor]})."]
    lines = [
        SECTION_HEADING,
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC with `.venv/bin/python {command}` "
        f"({options.mode.name} mode).",
        *experiment,
        machine_line(),
        f"Load average (1/5/15 min) at start / between benchmarks / at end: {' | '.join(loads)}. The 2 "
        "cores were shared with other work (other engineers' trainings and tests), and the load generator "
        "runs on the same cores as the service: absolute numbers are noisy; the ratios compare trials "
        "alternated within this one invocation.",
    ]
    if overhead is not None:
        lines += ["", *overhead_report(overhead, options.mode)]
    if load is not None:
        lines += ["", *load_report(load)]
    return "\n".join(lines) + "\n"


def options_args(options: Options) -> list[str]:
    args = ["--quick"] if options.mode is QUICK else []
    if options.executor != "thread":
        args += ["--executor", options.executor]
    if options.benchmarks != BENCHMARKS:
        args += ["--only", *options.benchmarks]
    return args


BENCHMARKS = ("overhead", "load")
EXECUTOR_NOTES = {
    "thread": "each run trains on a thread of the service process",
    "process": "each run trains in a child process of the service; service CPU includes those processes",
    "ray": "each run trains in a Ray actor process of a private local Ray instance",
}


async def run_all(options: Options) -> tuple[OverheadResult | None, LoadResult | None, list[str]]:
    loads = [load_average()]
    overhead = load = None
    if "overhead" in options.benchmarks:
        log(f"benchmark 1 (tracking + WebSocket overhead), {options.mode.name} mode")
        overhead = await run_overhead(options)
        loads.append(load_average())
    if "load" in options.benchmarks:
        log(f"benchmark 2 (load), {options.mode.name} mode")
        load = await run_load(options)
        loads.append(load_average())
    return overhead, load, loads


def parse_options(argv: Sequence[str] | None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs and windows, one pair each")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument(
        "--executor",
        choices=("thread", "process", "ray"),
        default="thread",
        help="EXECUTOR of the services under test (ray: a private local Ray, needs requirements-ray.txt)",
    )
    args = parser.parse_args(argv)
    benchmarks = tuple(b for b in BENCHMARKS if b in args.only)
    return Options(QUICK if args.quick else FULL, args.executor, benchmarks), not args.no_write


def main(argv: Sequence[str] | None = None) -> None:
    options, write = parse_options(argv)
    started = datetime.datetime.now(datetime.UTC)
    overhead, load, loads = asyncio.run(run_all(options))
    section = report(options, overhead, load, started, loads)
    print(section)
    if write:
        write_section(SECTION_HEADING, section)
        log(f"wrote its section of {RESULTS_FILE}")


if __name__ == "__main__":
    main()
