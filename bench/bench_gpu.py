"""GPU check, for a machine with CUDA: the real service trains PPO and DQN on the GPU end to end.

Starts ``uvicorn main:app`` on 127.0.0.1 (SQLite file and local MLflow store in a temporary directory,
``MAX_CONCURRENT_RUNS=1`` so runs do not share the machine), then for PPO and DQN, on ``cuda`` and on
``cpu`` in turn: ``POST /training/start``, listen on the run's WebSocket, wait for ``completed`` and check
that the run reports the device it asked for, that its ONNX export passed verification, that the
downloaded ``model.onnx`` runs in onnxruntime (``agents.replay``) and that MLflow holds its metrics. A tiny
``"device": "auto"`` run must resolve to ``cuda``. Last, a real CUDA out-of-memory error must be turned
into the message that says what to lower.

Usage: ``python -m bench.bench_gpu [--episodes N] [--no-write]`` (``make bench-gpu``). Exits 2 without
CUDA. The fps ratio cuda/cpu is informational: these networks are small, and Stable-Baselines3 itself
warns that PPO with small networks is often faster on the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from websockets.asyncio.client import connect

from bench.results_file import write_section
from bench.service_process import Service

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SECTION_HEADING = "## GPU check"
FINAL_STATES = {"completed", "failed", "stopped", "interrupted"}
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RunOutcome:
    algorithm: str
    device_requested: str
    status: dict[str, Any]
    ws_messages: int
    ws_episodes_seen: int
    onnx_replay_exit: int
    mlflow_metrics: list[str]

    @property
    def problems(self) -> list[str]:
        found = []
        if self.status["status"] != "completed":
            found.append(f"status {self.status['status']}: {self.status.get('error')}")
        expected = "cuda" if self.device_requested in {"cuda", "auto"} else "cpu"
        if self.status.get("device") != expected:
            found.append(f"device {self.status.get('device')!r}, expected {expected!r}")
        onnx = self.status.get("onnx") or {}
        if onnx.get("status") != "exported" or onnx.get("parity_passed") is not True:
            found.append(f"onnx {onnx}")
        if self.onnx_replay_exit not in (0, 1):  # 1 = a tiny run that did not reach the goal: still ran
            found.append(f"replay_onnx exit {self.onnx_replay_exit}")
        if self.ws_messages == 0:
            found.append("no WebSocket progress message")
        if self.status.get("reward") is not None and "reward" not in self.mlflow_metrics:
            found.append(f"no reward metric in MLflow: {self.mlflow_metrics}")
        return found


async def listen(url: str) -> tuple[int, set[int]]:
    """Progress messages until the final one: (count, distinct episode numbers)."""
    count, episodes = 0, set()
    async with connect(url, open_timeout=30) as socket:
        async for raw in socket:
            message = json.loads(raw)
            count += 1
            if isinstance(message.get("episode"), int):
                episodes.add(message["episode"])
            if message.get("status") in FINAL_STATES:
                break
    return count, episodes


async def wait_final(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        body: dict[str, Any] = (await http.get(f"/training/status/{run_id}")).json()
        onnx_settled = body["status"] != "completed" or (body.get("onnx") or {}).get("status") in {
            "exported",
            "failed",
        }
        if body["status"] in FINAL_STATES and onnx_settled:
            return body
        await asyncio.sleep(1.0)
    raise TimeoutError(f"run {run_id} did not finish in {RUN_TIMEOUT_S} s")


async def train_once(service: Service, work: Path, algorithm: str, device: str, episodes: int) -> RunOutcome:
    body = {
        "algorithm": algorithm,
        "total_episodes": episodes,
        "timesteps_per_episode": 2048,
        "maze_size": 10,
        "maze_mode": "random",
        "seed": 7,
        "device": device,
    }
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60, trust_env=False) as http:
        started = await http.post("/training/start", json=body)
        started.raise_for_status()
        run_id = started.json()["experiment_id"]
        listener = asyncio.create_task(listen(service.ws_url(run_id)))
        status = await wait_final(http, run_id)
        ws_messages, episodes_seen = await asyncio.wait_for(listener, timeout=60)
        onnx_path = work / f"{run_id}.onnx"
        replay_exit = -1
        if (status.get("onnx") or {}).get("status") == "exported":
            onnx_path.write_bytes((await http.get(f"/experiments/{run_id}/model.onnx")).content)
            replay = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agents.replay",
                str(onnx_path),
                "--maze-seed",
                "12345",
                cwd=PROJECT_ROOT,
                stdout=subprocess.DEVNULL,
            )
            replay_exit = await replay.wait()
        detail = (await http.get(f"/experiments/{run_id}")).json()
    return RunOutcome(
        algorithm,
        device,
        status,
        ws_messages,
        len(episodes_seen),
        replay_exit,
        sorted(detail.get("metrics", {})),
    )


def oom_message() -> str:
    """Cause a real CUDA out-of-memory error (a 4 TiB tensor) and describe it as the service does."""
    from training.job import describe_error

    try:
        torch.empty(2**42, dtype=torch.uint8, device="cuda")
    except torch.cuda.OutOfMemoryError as error:
        return describe_error(error)
    return "no out-of-memory error was raised"


def report(outcomes: list[RunOutcome], oom: str, episodes: int) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    lines = [
        SECTION_HEADING,
        "",
        f"Measured {now} with `python -m bench.bench_gpu --episodes {episodes}`. Machine: {gpu}, "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}). Real service (uvicorn, SQLite, local MLflow store), one run at a "
        f"time, "
        f"maze 10×10 random, {episodes} × 2048 steps, default networks and n_envs.",
        "",
        "| algorithm | device asked | device used | status | fps | WS msgs | ONNX parity | export s "
        "| replay_onnx exit | problems |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        onnx = o.status.get("onnx") or {}
        lines.append(
            f"| {o.algorithm} | {o.device_requested} | {o.status.get('device')} | {o.status['status']} "
            f"| {o.status.get('fps') or 0:.0f} | {o.ws_messages} | {onnx.get('parity_passed')} "
            f"| {onnx.get('export_seconds') or 0:.2f} | {o.onnx_replay_exit} "
            f"| {'; '.join(o.problems) or 'none'} |"
        )
    lines.append("")
    for algorithm in ("PPO", "DQN"):
        fps = {o.device_requested: o.status.get("fps") or 0.0 for o in outcomes if o.algorithm == algorithm}
        if fps.get("cuda") and fps.get("cpu"):
            lines.append(f"- {algorithm}: fps cuda / cpu = {fps['cuda'] / fps['cpu']:.2f} (informational).")
    shown = oom if len(oom) <= 300 else f"{oom[:120]} … {oom[-160:]}"
    lines.append(f"- A real CUDA out-of-memory error (a 4 TiB tensor) is reported as: `{shown}`")
    return lines


async def run_all(episodes: int, devices: list[str]) -> tuple[list[RunOutcome], str]:
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        # One run at a time (the default cap), so that runs do not share the machine.
        service = Service("gpu", {"PROGRESS_INTERVAL_S": "2", "EVAL_EPISODES": "20"})
        try:
            service.start(timeout_s=180)
            outcomes = []
            for algorithm in ("PPO", "DQN"):
                for device in devices:
                    outcome = await train_once(service, work, algorithm, device, episodes)
                    print(f"{algorithm} {device}: {outcome.status['status']} fps {outcome.status.get('fps')}")
                    outcomes.append(outcome)
            if "cuda" in devices:
                outcomes.append(await train_once(service, work, "PPO", "auto", 2))
        finally:
            service.stop(keep_log_at=os.environ.get("BENCH_GPU_LOG"))
    return outcomes, oom_message() if "cuda" in devices else "not checked (no cuda in --devices)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10, help="iterations per run (× 2048 steps)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    parser.add_argument(
        "--devices", default="cuda,cpu", help="comma-separated; cpu alone checks this script without a GPU"
    )
    args = parser.parse_args(argv)
    devices = args.devices.split(",")
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        sys.exit(2)
    outcomes, oom = asyncio.run(run_all(args.episodes, devices))
    lines = report(outcomes, oom, args.episodes)
    print("\n".join(lines))
    if not args.no_write:
        write_section(SECTION_HEADING, "\n".join(lines))
    problems = [p for o in outcomes for p in o.problems]
    if problems or ("cuda" in devices and "Lower n_envs" not in oom):
        sys.exit(f"GPU check failed: {problems or oom}")


if __name__ == "__main__":
    main()
