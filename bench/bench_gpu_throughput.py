"""Training env steps/s on a CUDA GPU against two CPU cores of the same machine, side by side in one run.

Issue 19's GPU target: with ``device: cuda`` and batches shaped for a GPU (hundreds to thousands of mazes
stepped together), at least 20x the training steps/s of two CPU cores with the service's defaults, and
the GPU's utilisation reported. Every measurement runs in a fresh subprocess (the CPU ones pinned to two
cores with one torch thread, as the service trains a run), PPO and DQN, the default ``planner`` policy,
random 10x10 mazes. After the timed training each model is evaluated on 100 held-out mazes, so a fast
configuration that stops learning shows it.

Usage: ``python -m bench.bench_gpu_throughput [--out results.json] [--quick]``; prints a Markdown table.
Needs CUDA for the GPU rows (without it only the CPU rows run). Imports only the RL parts of the project
(``agents``, ``rl_maze``, ``mazes``), so it runs where the service's web stack is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CPU_DEFAULTS = "CPU, 2 cores, defaults"

# The GPU shapes tried: many mazes per step, a rollout or replay batch to match.
PPO_GPU = {"n_steps": 32, "batch_size": 8192, "n_epochs": 4}
DQN_GPU = {"batch_size": 1024, "gradient_steps": 4, "buffer_size": 500_000, "learning_starts": 20_000}


@dataclass(frozen=True)
class Job:
    label: str
    algorithm: str
    device: str
    n_envs: int
    hyperparameters: dict[str, Any]
    warmup_steps: int
    steps: int
    cpu_cores: int  # 0: no pinning


def _gpu_sampler(samples: list[float], stop: threading.Event) -> None:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # no NVML: no utilisation column
        return
    while not stop.wait(0.1):
        samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))


def run_job(job: Job) -> dict[str, Any]:
    """In the worker process: build, warm up, time ``steps`` of training, evaluate on held-out mazes."""
    if job.cpu_cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: job.cpu_cores])
    import torch

    import maze_env
    from agents import building, evaluation

    torch.set_num_threads(1 if job.device == "cpu" else 2)
    env = building.make_vec_env(10, "random", 0, job.n_envs)
    model = building.build_model(
        job.algorithm, env, job.hyperparameters, seed=0, device=job.device, timesteps_per_episode=2048
    )
    model.learn(total_timesteps=job.warmup_steps)
    samples: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_gpu_sampler, args=(samples, stop), daemon=True)
    if job.device == "cuda":
        sampler.start()
    done_before, started = model.num_timesteps, time.perf_counter()
    model.learn(total_timesteps=job.steps, reset_num_timesteps=False)
    seconds = time.perf_counter() - started
    stop.set()
    steps = model.num_timesteps - done_before
    result = evaluation.evaluate(model, 10, maze_env.eval_maze_seeds(100))
    return {
        **asdict(job),
        "steps_per_second": steps / seconds,
        "timed_steps": steps,
        "seconds": seconds,
        "trained_steps": model.num_timesteps,
        "held_out_success": result.success_rate,
        "gpu_utilisation": sum(samples) / len(samples) if samples else None,
    }


def jobs(quick: bool, cuda: bool, gpu_envs: list[int], cpu_envs: list[int], ppo_batch_size: int) -> list[Job]:
    scale = 4 if quick else 1
    ppo_gpu = {**PPO_GPU, "batch_size": ppo_batch_size}
    out = [
        Job(CPU_DEFAULTS, "PPO", "cpu", 16, {}, 4_096, 32_768 // scale, 2),
        Job(CPU_DEFAULTS, "DQN", "cpu", 16, {}, 2_048, 16_384 // scale, 2),
    ]
    for n_envs in cpu_envs:  # the GPU shapes on the two cores: how much is batching alone
        rollout = 32 * n_envs
        out.append(
            Job(f"CPU, 2 cores, {n_envs} envs", "PPO", "cpu", n_envs, ppo_gpu, rollout, 2 * rollout, 2)
        )
        out.append(Job(f"CPU, 2 cores, {n_envs} envs", "DQN", "cpu", n_envs, DQN_GPU, 40_000, 16 * n_envs, 2))
    if cuda and 16 in gpu_envs:
        out += [
            Job("GPU, defaults (16 envs)", "PPO", "cuda", 16, {}, 4_096, 32_768 // scale, 0),
            Job("GPU, defaults (16 envs)", "DQN", "cuda", 16, {}, 2_048, 16_384 // scale, 0),
        ]
    for n_envs in gpu_envs if cuda else []:
        if n_envs == 16:
            continue
        rollout = 32 * n_envs
        out.append(
            Job(f"GPU, {n_envs} envs", "PPO", "cuda", n_envs, ppo_gpu, rollout, 8 * rollout // scale, 0)
        )
        out.append(
            Job(f"GPU, {n_envs} envs", "DQN", "cuda", n_envs, DQN_GPU, 40_000, 64 * n_envs // scale, 0)
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="a quarter of the timed steps")
    parser.add_argument("--gpu-envs", type=int, nargs="+", default=[16, 256, 1024, 4096])
    parser.add_argument(
        "--ppo-batch-size", type=int, default=PPO_GPU["batch_size"], help="PPO's GPU minibatch"
    )
    parser.add_argument("--algorithms", nargs="+", default=["PPO", "DQN"])
    parser.add_argument("--cpu-envs", type=int, nargs="*", default=[], help="GPU shapes on the CPU too")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_job(Job(**json.loads(args.worker)))))
        return

    import torch

    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    rows = []
    for job in jobs(args.quick, cuda, args.gpu_envs, args.cpu_envs, args.ppo_batch_size):
        if job.algorithm not in args.algorithms:
            continue
        command = [sys.executable, "-m", "bench.bench_gpu_throughput", "--worker", json.dumps(asdict(job))]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{job.label} {job.algorithm}: failed\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    header = {
        "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": gpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if args.out:
        args.out.write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    print(f"\n{header}\n")
    columns = (
        "configuration",
        "algo",
        "envs",
        "steps/s",
        "× CPU defaults",
        "GPU util",
        "held-out",
        "trained steps",
    )
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    # The ratio is against the CPU with the service's defaults (16 envs), measured in this run.
    cpu_rate = {row["algorithm"]: row["steps_per_second"] for row in rows if row["label"] == CPU_DEFAULTS}
    for row in rows:
        ratio = row["steps_per_second"] / cpu_rate[row["algorithm"]] if row["algorithm"] in cpu_rate else 0.0
        util = "" if row["gpu_utilisation"] is None else f"{row['gpu_utilisation']:.0f}%"
        print(
            f"| {row['label']} | {row['algorithm']} | {row['n_envs']} | {row['steps_per_second']:,.0f} "
            f"| {ratio:.1f}× | {util} | {row['held_out_success']:.0%} | {row['trained_steps']:,} |"
        )


if __name__ == "__main__":
    main()
