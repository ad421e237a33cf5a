"""Ray executor vs threads: two concurrent runs on one machine.

Starts a real local Ray cluster (one loopback-only node, as in the tests) and two
services over SQLite: one with EXECUTOR=thread, one with EXECUTOR=ray. Each trial starts two identical
PPO runs at once through `POST /training/start` and measures, from the client:

- scheduling latency: from the POST to the first status poll showing `timesteps > 0`;
- throughput: both runs' steps / wall time from the first step seen to the last run's final step.

Trials alternate thread / ray so machine noise hits both. Writes the "## Ray executor" section of
``bench/RESULTS.md`` (replacing an older one).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.bench_onnx import cpu_model
from bench.results_file import write_section
from tests.conftest import LiveService
from tests.ray_cluster import RayCluster

SECTION_HEADING = "## Ray executor"
POLL_S = 0.05
RUNS_PER_TRIAL = 2


@dataclasses.dataclass
class Trial:
    executor: str
    latencies_s: list[float]
    steps_per_s: float


def run_body(timesteps: int) -> dict[str, Any]:
    return {
        "algorithm": "PPO",
        "total_episodes": max(1, timesteps // 512),
        "timesteps_per_episode": 512,
        "maze_size": 5,
        "n_envs": 4,
        "seed": 3,
    }


def trial(service: LiveService, executor: str, timesteps: int) -> Trial:
    """Two runs started together; poll both until their last step."""
    body = run_body(timesteps)
    with service.client() as http:
        posted: dict[str, float] = {}
        for _ in range(RUNS_PER_TRIAL):
            sent = time.monotonic()
            response = http.post("/training/start", json=body)
            response.raise_for_status()
            posted[response.json()["experiment_id"]] = sent
        first_step: dict[str, float] = {}
        done: dict[str, float] = {}
        total = 0
        while len(done) < len(posted):
            for run_id in posted:
                if run_id in done:
                    continue
                status = http.get(f"/training/status/{run_id}").json()
                if status["status"] == "failed":
                    raise RuntimeError(f"{executor} run failed: {status['error']}")
                now = time.monotonic()
                if status["timesteps"] > 0:
                    first_step.setdefault(run_id, now)
                if status["timesteps"] >= status["total_timesteps"]:
                    done[run_id] = now
                    total += status["total_timesteps"]
            time.sleep(POLL_S)
        wait_idle(http)
    latencies = [first_step[run_id] - posted[run_id] for run_id in posted]
    wall = max(done.values()) - min(first_step.values())
    return Trial(executor, latencies, total / wall)


def wait_idle(http: httpx.Client, timeout_s: float = 120) -> None:
    """Let evaluation and ONNX export finish before the next trial starts."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http.get("/experiments", params={"status": "running"}).json()["total"] == 0:
            time.sleep(1.0)  # the ONNX export follows the final state
            return
        time.sleep(0.2)


def format_section(trials: list[Trial], timesteps: int, command: str, loads: tuple[float, float]) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    by = {name: [t for t in trials if t.executor == name] for name in ("thread", "ray")}
    fps = {name: statistics.median(t.steps_per_s for t in group) for name, group in by.items()}
    latency = {
        name: statistics.median(value for t in group for value in t.latencies_s) for name, group in by.items()
    }
    worst = {name: max(value for t in group for value in t.latencies_s) for name, group in by.items()}
    lines = [
        SECTION_HEADING,
        "",
        f"Measured {now} with `{command}`.",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, shared with other work (noisy: trials alternate "
        f"thread / ray), no GPU. Python {platform.python_version()}. 1-minute load average {loads[0]:.1f} "
        f"at start, {loads[1]:.1f} at end.",
        "",
        f"- Each trial: {RUNS_PER_TRIAL} PPO runs started together (5x5 maze, 4 envs, "
        f"{timesteps} steps each), "
        "SQLite and a local MLflow store, same machine. Ray: a local cluster (one loopback-only "
        "node with 2 CPUs, RAY_CPUS_PER_RUN=1); threads: MAX_CONCURRENT_RUNS=2.",
        "- Scheduling latency: `POST /training/start` → first status poll (every 50 ms) with timesteps > 0; "
        "it includes building the env and model (and, with Ray, starting an actor process that imports "
        "torch and Stable-Baselines3).",
        "- Throughput: both runs' steps / (last run's final step − first step seen).",
        "",
        "| trial | executor | steps/s (2 runs) | latency run 1 (s) | latency run 2 (s) |",
        "|---|---|---|---|---|",
    ]
    for number, t in enumerate(trials, 1):
        first, second = t.latencies_s
        lines.append(f"| {number} | {t.executor} | {t.steps_per_s:.0f} | {first:.2f} | {second:.2f} |")
    lines += [
        "",
        f"Median steps/s: thread {fps['thread']:.0f}, ray {fps['ray']:.0f}; **ratio ray / thread = "
        f"{fps['ray'] / fps['thread']:.2f}**. Median scheduling latency: thread {latency['thread']:.2f} s "
        f"(worst {worst['thread']:.2f} s), ray {latency['ray']:.2f} s (worst {worst['ray']:.2f} s).",
        "",
        "Reading: two threads share one interpreter lock (SB3's Python glue holds it), two Ray actors "
        "are two "
        "processes, so on 2 cores Ray trains faster even on one machine. Its latency is a fresh actor "
        "process importing torch, Stable-Baselines3 and MLflow before the first step (the thread executor "
        "has them imported); a pool of warm actors would remove most of it.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="trials per executor")
    parser.add_argument("--timesteps", type=int, default=20_480, help="steps per run")
    parser.add_argument("--quick", action="store_true", help="2 trials each, 10k steps")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.timesteps = 2, 10_240
    command = "python -m bench.bench_ray " + " ".join(sys.argv[1:])
    loads = [os.getloadavg()[0]]
    root = Path(tempfile.mkdtemp(prefix="rayb-", dir="/tmp"))
    cluster = RayCluster(root, worker_data_dir=root / "worker-data").start()
    common = {"EVAL_EPISODES": "5", "CHECKPOINT_EVERY_EPISODES": "0", "LOG_LEVEL": "WARNING"}
    services = {
        "thread": LiveService(root / "thread" / "data", env={**common, "EXECUTOR": "thread"}),
        "ray": LiveService(
            root / "ray" / "data",
            env={**common, **cluster.auth_env, "EXECUTOR": "ray", "RAY_ADDRESS": cluster.address},
        ),
    }
    trials: list[Trial] = []
    try:
        for service in services.values():
            service.start()
        trial(services["ray"], "ray", 1024)  # warm-up: the cluster's first worker processes
        trial(services["thread"], "thread", 1024)
        for _ in range(args.trials):
            for executor in ("thread", "ray"):
                result = trial(services[executor], executor, args.timesteps)
                print(
                    f"{executor}: {result.steps_per_s:.0f} steps/s, latency {result.latencies_s}", flush=True
                )
                trials.append(result)
    finally:
        for service in services.values():
            service.stop()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    loads.append(os.getloadavg()[0])
    section = format_section(trials, args.timesteps, command, (loads[0], loads[1]))
    print(section)
    if not args.no_write:
        write_section(SECTION_HEADING, section)


if __name__ == "__main__":
    main()
