"""The service benchmark's load generators: WebSocket listeners (here or in a process of their own), status
pollers on a fixed schedule, and the 1 Hz progress probe."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import gc
import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

from bench.service_process import KeepAliveClient, Service

WS_CLIENTS = 100
POLL_CLIENTS = 50
POLL_INTERVAL_S = 1.0  # each polling client asks once a second (a dashboard's rate), on a fixed schedule
PROBE_INTERVAL_S = 1.0


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


@dataclass
class PollStats:
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


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
