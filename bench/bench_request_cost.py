"""What one `GET /training/status/{id}` costs the service's event loop when requests arrive as in the
load test (50 keep-alive clients, each once a second, staggered), against the floor of the same
uvicorn: a FastAPI route that does nothing and a raw ASGI callable, each with and without uvicorn's
access log. Prints a Markdown table (bench/RESULTS.md, "Service load"); CPU from /proc, so Linux only.

    .venv/bin/python -m bench.bench_request_cost [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Response

from bench.machine import machine_line
from bench.process_cpu import CpuMeter
from bench.service_clients import POLL_CLIENTS, POLL_INTERVAL_S, PollStats, poller
from bench.service_process import Service, http_client, settled, start_run, wait_for_status

THIS_MODULE = "bench.bench_request_cost"
TINY_RUN = {"algorithm": "PPO", "total_episodes": 1, "timesteps_per_episode": 128, "maze_size": 5}
ANSWER = b'{"status":"completed"}'
TABLE_HEAD = (
    "| server answering `GET /training/status/{id}` | event-loop cores | CPU-ms per request | requests "
    "| errors |\n|---|---|---|---|---|"
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def raw_app(
    scope: Scope, _receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    """The least an ASGI app can do for a request."""
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


fastapi_app = FastAPI()


@fastapi_app.get("/training/status/{experiment_id}")
async def do_nothing_status(experiment_id: str) -> Response:
    return Response(ANSWER, media_type="application/json")


@dataclass(frozen=True)
class Case:
    label: str
    app: str
    uvicorn_args: tuple[str, ...] = ()

    @property
    def is_service(self) -> bool:
        return self.app == "main:app"


CASES = [
    Case("this service (threads), its runs finished", "main:app"),
    Case("this service, `--no-access-log`", "main:app", ("--no-access-log",)),
    Case("FastAPI route that does nothing", f"{THIS_MODULE}:fastapi_app"),
    Case("the same, `--no-access-log`", f"{THIS_MODULE}:fastapi_app", ("--no-access-log",)),
    Case("raw ASGI callable", f"{THIS_MODULE}:raw_app"),
    Case("the same, `--no-access-log`", f"{THIS_MODULE}:raw_app", ("--no-access-log",)),
]


@dataclass(frozen=True)
class Measurement:
    event_loop_cores: float
    seconds: float
    requests: int
    errors: int

    @property
    def ms_per_request(self) -> float:
        return 1000 * self.event_loop_cores * self.seconds / self.requests if self.requests else float("nan")


async def finished_runs(service: Service) -> list[str]:
    """Two runs of the service that have ended, so that nothing trains while it is measured."""
    async with http_client(service) as http:
        run_ids = [await start_run(http, {**TINY_RUN, "seed": seed}) for seed in (1, 2)]
        for run_id in run_ids:
            await wait_for_status(http, run_id, settled, timeout_s=120)
    return run_ids


async def measure(service: Service, run_ids: list[str], seconds: float) -> Measurement:
    until = time.monotonic() + seconds
    stats = PollStats()
    meter = CpuMeter(service.pid)
    await asyncio.gather(
        *(
            poller(service.keep_alive_client(), run_ids, POLL_INTERVAL_S * i / POLL_CLIENTS, until, stats)
            for i in range(POLL_CLIENTS)
        )
    )
    return Measurement(meter.read().event_loop, seconds, len(stats.latencies_ms), sum(stats.errors.values()))


async def run_case(case: Case, seconds: float) -> Measurement:
    service = Service(
        case.label,
        {"EVAL_EPISODES": "0"},
        app=case.app,
        uvicorn_args=case.uvicorn_args,
        ready_path="/health" if case.is_service else "/training/status/ready",
    )
    try:
        service.start()
        run_ids = await finished_runs(service) if case.is_service else ["a", "b"]
        await asyncio.sleep(2)  # the runs' last writes and the first snapshot refreshes settle
        return await measure(service, run_ids, seconds)
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per case")
    args = parser.parse_args()
    rows = []
    for case in CASES:
        result = asyncio.run(run_case(case, args.seconds))
        rows.append(
            f"| {case.label} | {result.event_loop_cores:.3f} | {result.ms_per_request:.2f} | "
            f"{result.requests} | {result.errors} |"
        )
        print(rows[-1], flush=True)
    print(f"\n{machine_line()}\n")
    print(TABLE_HEAD)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
