"""The service benchmark's two measurements: tracking + WebSocket overhead on a run's fps, and training
fps and status latency under load (with the status requests' CPU cost)."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.machine import log
from bench.process_cpu import CpuMeter, CpuUse, cpu_seconds
from bench.service_clients import (
    POLL_CLIENTS,
    POLL_INTERVAL_S,
    WS_CLIENTS,
    ListenerProcess,
    PollStats,
    WsStats,
    listeners,
    poller,
    probe,
)
from bench.service_process import (
    FINAL_STATES,
    KeepAliveClient,
    Service,
    http_client,
    settled,
    start_run,
    training_run,
    wait_for_status,
    wait_until_idle,
    warm_up,
)

STATUS_COST_REQUESTS = 2000
STATUS_COST_CONNECTIONS = 10
BENCHMARKS = ("overhead", "load")


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
