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
import datetime
from collections.abc import Sequence

from bench.machine import load_average, log
from bench.results_file import RESULTS_FILE, write_section
from bench.service_measurements import (
    BENCHMARKS,
    FULL,
    QUICK,
    LoadResult,
    Options,
    OverheadResult,
    run_load,
    run_overhead,
)
from bench.service_report import SECTION_HEADING, report


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
