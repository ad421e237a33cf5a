"""Learning benchmark: our PPO/DQN agents vs a naive SB3 PPO baseline, trained and evaluated in one run.

Each row trains from scratch on CPU, then evaluates the deterministic policy with
``agents.evaluation.evaluate_with`` (vectorised). Fixed rows evaluate on the training maze; random rows on
unseen evaluation mazes (``maze_env.eval_maze_seeds``, disjoint from training seeds).

Naive baseline: SB3 ``PPO("MlpPolicy")`` with default hyperparameters, 8 ``DummyVecEnv`` envs,
``n_steps=256``, on the flattened one-hot square grid (3 channels: wall, agent, goal; 21x21 squares for a
10x10 maze), fixed 10x10 maze. It uses the same environment dynamics, reward and time limit as ours
(``MazeEnv``), so the difference measured is the agent (network and hyperparameters).

Usage::

    python bench/bench_learning.py --quick          # a few minutes
    python bench/bench_learning.py                  # the whole table
    python bench/bench_learning.py --rows ppo-random-10,baseline --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import stable_baselines3
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import maze_env
from agents import building, evaluation, hyperparameters

SEED = 0
FIXED_MAZE_SEED = 0


@dataclass(frozen=True)
class RowSpec:
    """One benchmark row."""

    key: str
    label: str
    algorithm: str
    maze_mode: str
    maze_size: int
    steps: int
    eval_mazes: int
    baseline: bool = False


@dataclass(frozen=True)
class RowResult:
    """Measured outcome of one row."""

    key: str
    label: str
    algorithm: str
    maze_mode: str
    maze_size: int
    steps: int
    eval_mazes: int
    success_rate: float
    path_efficiency: float
    mean_steps: float
    train_wall_s: float
    train_cpu_s: float
    eval_wall_s: float
    steps_per_s: float


def full_rows() -> list[RowSpec]:
    """The whole table (issue 3)."""
    return [
        RowSpec("baseline", "naive SB3 PPO (one-hot MLP)", "PPO", "fixed", 10, 100_000, 1, baseline=True),
        RowSpec("ppo-fixed-10", "ours", "PPO", "fixed", 10, 100_000, 1),
        RowSpec("dqn-fixed-10", "ours", "DQN", "fixed", 10, 50_000, 1),
        RowSpec("ppo-random-10", "ours", "PPO", "random", 10, 102_400, 1000),
        RowSpec("dqn-random-10", "ours", "DQN", "random", 10, 102_400, 1000),
        RowSpec("ppo-random-15", "ours", "PPO", "random", 15, 102_400, 1000),
        RowSpec("ppo-random-20", "ours", "PPO", "random", 20, 102_400, 1000),
    ]


def quick_rows() -> list[RowSpec]:
    """A few minutes: small budgets, fewer evaluation mazes."""
    return [
        RowSpec("baseline", "naive SB3 PPO (one-hot MLP)", "PPO", "fixed", 10, 20_480, 1, baseline=True),
        RowSpec("ppo-fixed-10", "ours", "PPO", "fixed", 10, 20_480, 1),
        RowSpec("ppo-random-10", "ours", "PPO", "random", 10, 40_960, 200),
        RowSpec("dqn-fixed-10", "ours", "DQN", "fixed", 10, 20_000, 1),
    ]


def squares_one_hot(obs: np.ndarray) -> np.ndarray:
    """Square-grid one-hot picture ``(3, 2N+1, 2N+1)`` (wall, agent, goal) from a cell observation.

    :param obs: one observation as described by ``maze_env.OBSERVATION_ENCODING``.
    """
    size = obs.shape[1]
    side = 2 * size + 1
    picture = np.zeros((3, side, side), dtype=np.float32)
    wall = picture[0]
    wall[:] = 1.0
    wall[1::2, 1::2] = 0.0
    passages = obs[:4] > 0.5
    wall[1::2, 2 : side - 1 : 2] = 1.0 - passages[1, :, : size - 1]
    wall[2 : side - 1 : 2, 1::2] = 1.0 - passages[2, : size - 1, :]
    picture[1, 1::2, 1::2] = obs[maze_env.AGENT_CHANNEL]
    picture[2, 1::2, 1::2] = obs[maze_env.GOAL_CHANNEL]
    return picture


class OneHotSquares(gymnasium.ObservationWrapper):
    """The naive observation: flattened one-hot square grid."""

    def __init__(self, env: maze_env.MazeEnv) -> None:
        super().__init__(env)
        side = 2 * env.maze_size + 1
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, shape=(3 * side * side,), dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return squares_one_hot(observation).reshape(-1)


def check_one_hot_matches_grid() -> None:
    """The conversion must reproduce the maze's own square grid (guards the baseline's observation)."""
    env = maze_env.MazeEnv(maze_size=10, maze_mode="fixed", seed=FIXED_MAZE_SEED)
    obs, _ = env.reset()
    picture = squares_one_hot(obs)
    assert np.array_equal(picture[0].astype(np.uint8), env.maze.grid)
    assert picture[1][env.agent_pos] == 1 and picture[2][env.maze.goal] == 1


def train_baseline(spec: RowSpec) -> tuple[BaseAlgorithm, Callable[[np.ndarray], np.ndarray]]:
    def make() -> gymnasium.Env:
        return OneHotSquares(maze_env.MazeEnv(spec.maze_size, "fixed", seed=FIXED_MAZE_SEED))

    model = PPO("MlpPolicy", DummyVecEnv([make] * 8), n_steps=256, seed=SEED, device="cpu", verbose=0)
    model.set_logger(building.in_memory_logger())  # as build_model does: no /tmp/SB3-* directory per learn()

    def predict(batch: np.ndarray) -> np.ndarray:
        flat = np.stack([squares_one_hot(o).reshape(-1) for o in batch])
        actions, _ = model.predict(flat, deterministic=True)
        return np.asarray(actions)

    return model, predict


def train_ours(spec: RowSpec) -> tuple[BaseAlgorithm, Callable[[np.ndarray], np.ndarray]]:
    maze_seed = FIXED_MAZE_SEED if spec.maze_mode == "fixed" else SEED
    env = building.make_vec_env(
        spec.maze_size, spec.maze_mode, maze_seed, hyperparameters.default_n_envs(spec.algorithm)
    )
    model = building.build_model(spec.algorithm, env, {}, seed=SEED, device="cpu", timesteps_per_episode=2048)

    def predict(batch: np.ndarray) -> np.ndarray:
        actions, _ = model.predict(batch, deterministic=True)
        return np.asarray(actions)

    return model, predict


def run_row(spec: RowSpec) -> RowResult:
    """Train and evaluate one row.

    :param spec: the row.
    """
    model, predict = train_baseline(spec) if spec.baseline else train_ours(spec)
    started, cpu_started = time.perf_counter(), time.process_time()
    model.learn(spec.steps)
    train_wall = time.perf_counter() - started
    # CPU time shows the cost of training even when the shared machine is busy (wall time then inflates).
    train_cpu = time.process_time() - cpu_started
    seeds = [FIXED_MAZE_SEED] if spec.maze_mode == "fixed" else maze_env.eval_maze_seeds(spec.eval_mazes)
    started = time.perf_counter()
    result = evaluation.evaluate_with(predict, spec.maze_size, seeds)
    eval_wall = time.perf_counter() - started
    return RowResult(
        key=spec.key,
        label=spec.label,
        algorithm=spec.algorithm,
        maze_mode=spec.maze_mode,
        maze_size=spec.maze_size,
        steps=spec.steps,
        eval_mazes=len(seeds),
        success_rate=result.success_rate,
        path_efficiency=result.path_efficiency,
        mean_steps=result.mean_steps,
        train_wall_s=train_wall,
        train_cpu_s=train_cpu,
        eval_wall_s=eval_wall,
        steps_per_s=model.num_timesteps / train_wall,
    )


def ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}x" if base > 0 else ("n/a (baseline 0)" if ours > 0 else "n/a")


def format_table(results: list[RowResult]) -> str:
    """Markdown table with ratios to the baseline row (when it ran).

    :param results: measured rows.
    """
    base = next((r for r in results if r.key == "baseline"), None)
    lines = [
        "| row | agent | algo | mode | N | train steps | eval mazes | success | path eff. | train wall (s) "
        "| train CPU (s) | steps/s | success vs baseline | steps/s vs baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        vs_success = ratio(r.success_rate, base.success_rate) if base and r is not base else "-"
        vs_speed = ratio(r.steps_per_s, base.steps_per_s) if base and r is not base else "-"
        lines.append(
            f"| {r.key} | {r.label} | {r.algorithm} | {r.maze_mode} | {r.maze_size} | {r.steps:,} | "
            f"{r.eval_mazes} | {r.success_rate:.1%} | {r.path_efficiency:.3f} | {r.train_wall_s:.0f} | "
            f"{r.train_cpu_s:.0f} | {r.steps_per_s:,.0f} | {vs_success} | {vs_speed} |"
        )
    return "\n".join(lines)


def machine_info(threads: int) -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": len(__import__("os").sched_getaffinity(0)),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": np.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small budgets, a few minutes")
    parser.add_argument("--rows", default="", help="comma-separated row keys to run (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the service uses 1-2)")
    parser.add_argument("--json", default="", help="also write results as JSON to this path")
    parser.add_argument("--steps", type=int, default=0, help="override the training budget of every row run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    check_one_hot_matches_grid()
    specs = quick_rows() if args.quick else full_rows()
    if args.rows:
        wanted = set(args.rows.split(","))
        specs = [s for s in specs if s.key in wanted]
    if args.steps:
        specs = [replace(s, steps=args.steps) for s in specs]
    info = machine_info(args.threads)
    print(json.dumps(info), flush=True)
    results = []
    for spec in specs:
        result = run_row(spec)
        results.append(result)
        print(json.dumps(asdict(result)), flush=True)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": info, "rows": [asdict(r) for r in results]}, indent=2)
        )


if __name__ == "__main__":
    main()
