"""Benchmark ONNX export of the service's policies: export + verification time, single-observation
inference (onnxruntime vs SB3 ``model.predict``, measured in the same run), and action agreement.

Usage: ``python bench/bench_onnx.py [--maze-sizes 5 10 30] [--repeats 300] [--no-write]``

Prints a Markdown table and writes it as the "## ONNX" section of ``bench/RESULTS.md`` (replacing an
earlier ONNX section, leaving every other section as it is).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import stable_baselines3
import torch
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.vec_env import VecEnv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents import building, hyperparameters
from agents.onnx_graph import uses_planner_tree
from agents.onnx_policy import OnnxPolicy
from bench.results_file import RESULTS_FILE, write_section
from mazes.grid import MIN_MAZE_SIZE, check_maze_size
from onnx_export import collect_observations, export_policy
from training.onnx_publish import verification_observations

SECTION_HEADING = "## ONNX"
MAZE_SEED = 7
TRAIN_TIMESTEPS = 2_000  # a short real training: timing does not depend on how well the policy plays
EXPORT_TARGET_S = 2.0
SPEEDUP_TARGET = 5.0


@dataclass(frozen=True)
class Row:
    network: str
    algorithm: str
    maze_size: int
    export_seconds: float
    size_kib: float
    distinct_observations: int
    action_agreement: float
    max_abs_diff: float
    sb3_us: float
    ort_us: float
    single_agreement: float
    sweeps_us: float | None  # the same planner exported with its sweeps (no tree), timed alongside

    @property
    def speedup(self) -> float:
        return self.sb3_us / self.ort_us


def build(
    network: str, algorithm: str, maze_size: int, train_timesteps: int = TRAIN_TIMESTEPS
) -> tuple[PPO | DQN, VecEnv]:
    env = building.make_vec_env(maze_size, "fixed", MAZE_SEED, hyperparameters.default_n_envs(algorithm))
    if network == "service default":
        model = building.build_model(algorithm, env, {}, seed=0, device="cpu", timesteps_per_episode=256)
    else:
        model = (PPO if algorithm == "PPO" else DQN)("MlpPolicy", env, seed=0, device="cpu")
        model.set_logger(building.in_memory_logger())  # as build_model does: no /tmp/SB3-* directory
    assert isinstance(model, PPO | DQN)
    if train_timesteps:
        model.learn(train_timesteps)
    return model, env


def time_single_observation(
    model: PPO | DQN, policy: OnnxPolicy, observations: np.ndarray, repeats: int
) -> tuple[float, float, float]:
    """Median microseconds per call for SB3 and onnxruntime, and their action agreement.

    The two alternate in blocks: load changes on the shared machine hit both alike, while neither runs
    with caches just flushed by the other (as strict call-by-call interleaving would do).
    """
    sb3_times: list[float] = []
    ort_times: list[float] = []
    sb3_actions: list[int] = []
    ort_actions: list[int] = []
    block = 25
    for first in range(0, repeats, block):
        indices = [i % len(observations) for i in range(first, min(first + block, repeats))]
        model.predict(observations[indices[0]], deterministic=True)  # warm-up, not timed
        for i in indices:
            start = time.perf_counter()
            action, _ = model.predict(observations[i], deterministic=True)
            sb3_times.append(time.perf_counter() - start)
            sb3_actions.append(int(action))
        policy.predict(observations[indices[0]][None])
        for i in indices:
            start = time.perf_counter()
            ort_actions.append(int(policy.predict(observations[i][None])[0]))
            ort_times.append(time.perf_counter() - start)
    agreement = float(np.mean(np.array(sb3_actions) == np.array(ort_actions)))
    return statistics.median(sb3_times) * 1e6, statistics.median(ort_times) * 1e6, agreement


def time_two_graphs(
    first: OnnxPolicy, second: OnnxPolicy, observations: np.ndarray, repeats: int
) -> tuple[float, float]:
    """Median microseconds per single-observation call of two ONNX policies, in alternating blocks."""
    times: tuple[list[float], list[float]] = ([], [])
    block = 25
    for start_index in range(0, repeats, block):
        indices = [i % len(observations) for i in range(start_index, min(start_index + block, repeats))]
        for policy, timings in zip((first, second), times, strict=True):
            policy.predict(observations[indices[0]][None])  # warm-up, not timed
            for i in indices:
                start = time.perf_counter()
                policy.predict(observations[i][None])
                timings.append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1e6, statistics.median(times[1]) * 1e6


def measure(network: str, algorithm: str, maze_size: int, repeats: int) -> Row:
    model, env = build(network, algorithm, maze_size)
    observations = collect_observations(model, env, verification_observations(maze_size))
    sweeps_us = None
    with tempfile.TemporaryDirectory() as tmp:
        report = export_policy(model, Path(tmp) / "policy.onnx", {"algorithm": algorithm}, observations)
        policy = OnnxPolicy(report.path)
        sb3_us, ort_us, single_agreement = time_single_observation(model, policy, observations, repeats)
        if uses_planner_tree(model):
            sweeps = export_policy(
                model, Path(tmp) / "sweeps.onnx", {"algorithm": algorithm}, observations, planner_tree=False
            )
            _, sweeps_us = time_two_graphs(policy, OnnxPolicy(sweeps.path), observations, repeats)
    return Row(
        network=network,
        algorithm=algorithm,
        maze_size=maze_size,
        export_seconds=report.export_seconds,
        size_kib=report.size_bytes / 1024,
        distinct_observations=len(np.unique(observations.reshape(len(observations), -1), axis=0)),
        action_agreement=report.parity.action_agreement,
        max_abs_diff=report.parity.max_abs_diff,
        sb3_us=sb3_us,
        ort_us=ort_us,
        single_agreement=single_agreement,
        sweeps_us=sweeps_us,
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_section(
    rows: list[Row], repeats: int, command: str, first_export_s: float, load_averages: tuple[float, float]
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = (
        f"Python {platform.python_version()}, torch {torch.__version__}, stable-baselines3 "
        f"{stable_baselines3.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"numpy {np.__version__}"
    )
    lines = [
        SECTION_HEADING,
        "",
        f"Measured {now} with `{command}`.",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores (shared with other work), no GPU. {versions}.",
        f"torch threads {torch.get_num_threads()}, onnxruntime 1 intra-op thread. 1-minute load average "
        f"{load_averages[0]:.1f} at start, {load_averages[1]:.1f} at end (other work on the machine slows "
        "every column; the speed-up column compares calls made side by side).",
        "",
        f"- Each model: fixed maze (seed {MAZE_SEED}), {TRAIN_TIMESTEPS} training steps, "
        "as many verification observations from `collect_observations` as the service uses "
        "(`training.onnx_publish.verification_observations`: 1,000 up to maze 14, 500 at 20, 222 at 30).",
        "- Export + verify = trace (TorchScript exporter, opset 17) + `onnx.checker` + onnxruntime parity. "
        f"The first export in a process also pays one-time imports: {first_export_s:.2f} s for a warm-up "
        "export of a tiny MLP here, not included below.",
        f"- Single observation: median of {repeats} calls each, alternating blocks of 25, "
        "SB3 `model.predict(obs, deterministic=True)` vs `OnnxPolicy.predict(obs[None])`, same observations.",
        "- The service default's planner is frozen: its graph reads goal distances off the maze's tree "
        "(`rl_maze.tree_distances`). The last column is the same model exported with its value-iteration "
        "sweeps instead (`export_policy(..., planner_tree=False)`), timed in blocks alternating with the "
        "tree graph. Target: one call at 30x30 <= 1 ms on one core.",
        f"- Targets: export + verify < {EXPORT_TARGET_S:g} s, speed-up >= {SPEEDUP_TARGET:g}x, "
        "100% agreement.",
        "",
        "| network | algo | maze | export + verify (s) | file (KiB) | distinct obs | parity agreement "
        "| max abs diff | SB3 predict (us) | onnxruntime (us) | speed-up | single-obs agreement "
        "| onnxruntime, sweeps graph (us) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.network} | {row.algorithm} | {row.maze_size}x{row.maze_size} | {row.export_seconds:.2f} "
            f"| {row.size_kib:.0f} | {row.distinct_observations} | {row.action_agreement:.1%} "
            f"| {row.max_abs_diff:.1e} | {row.sb3_us:.0f} | {row.ort_us:.0f} | {row.speedup:.1f}x "
            f"| {row.single_agreement:.1%} | {'' if row.sweeps_us is None else f'{row.sweeps_us:.0f}'} |"
        )
    return "\n".join(lines) + "\n"


def warm_up_export() -> float:
    """Seconds for a first export in this process (imports of torch.onnx, onnx, onnxruntime kernels)."""
    model, env = build("SB3 MlpPolicy", "PPO", MIN_MAZE_SIZE, train_timesteps=0)
    observations = collect_observations(model, env, 16)
    with tempfile.TemporaryDirectory() as tmp:
        return export_policy(model, Path(tmp) / "warm_up.onnx", {}, observations).export_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maze-sizes", type=int, nargs="+", default=[5, 10, 30])
    parser.add_argument("--repeats", type=int, default=300, help="single-observation calls timed per model")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS_FILE.name}")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the service trains on one thread per run; two shared cores here
    load_at_start = os.getloadavg()[0]
    first_export_s = warm_up_export()
    rows = []
    for maze_size in args.maze_sizes:
        check_maze_size(maze_size)
        for network in ("service default", "SB3 MlpPolicy"):
            for algorithm in hyperparameters.ALGORITHMS:
                rows.append(measure(network, algorithm, maze_size, args.repeats))
                print(rows[-1], flush=True)
    command = " ".join(["python bench/bench_onnx.py", *sys.argv[1:]])
    load_averages = (load_at_start, os.getloadavg()[0])
    section = format_section(rows, args.repeats, command, first_export_s, load_averages)
    print(section)
    if not args.no_write:
        write_section(SECTION_HEADING, section)


if __name__ == "__main__":
    main()
