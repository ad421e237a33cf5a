"""The service benchmark's report: its Markdown section of bench/RESULTS.md, each target met or missed."""

from __future__ import annotations

import datetime
import math
import statistics
from collections.abc import Sequence

from bench.machine import machine_line
from bench.service_clients import POLL_CLIENTS, POLL_INTERVAL_S, WS_CLIENTS
from bench.service_measurements import (
    BENCHMARKS,
    LOAD_RUN_STEPS_PER_EPISODE,
    QUICK,
    STATUS_COST_CONNECTIONS,
    LoadResult,
    LoadWindow,
    Mode,
    Options,
    OverheadResult,
    StatusCost,
)

SECTION_HEADING = "## Service load"
OVERHEAD_TARGET = 0.95
LOAD_FPS_TARGET = 0.90
P99_TARGET_MS = 100.0
EXECUTOR_NOTES = {
    "thread": "each run trains on a thread of the service process",
    "process": "each run trains in a child process of the service; service CPU includes those processes",
    "ray": "each run trains in a Ray actor process of a private local Ray instance",
}


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


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
