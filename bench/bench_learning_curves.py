"""Learning curves per policy (issue 18): held-out success at fixed step counts, mean and min over seeds.

For each (policy, algorithm) and each training seed, one model is built with the service's
``build_model`` (random mazes, the service's defaults) and trained up to each checkpoint in turn; at
every checkpoint, and before training (the untrained model, the table's first row), its deterministic
policy plays ``--eval-mazes`` held-out mazes (``maze_env.eval_maze_seeds``: never trained on). The table
shows, per checkpoint, the mean and the minimum success over the seeds (the issue's targets are per
seed, so the minimum is the number to read).

It is long: the issue's full table (4 policies x PPO/DQN x 5 seeds up to 2.048M steps at maze 10) is
tens of CPU-hours on a 2-core machine. It has not been run in full; run a slice::

    python bench/bench_learning_curves.py --policies planner_learned --algorithms PPO --seeds 0,1 \\
        --checkpoints 50000,100000 --eval-mazes 200
    python bench/bench_learning_curves.py                    # the whole table (hours)
    python bench/bench_learning_curves.py ... --write        # also replace its section of RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import maze_env
from agents import building, evaluation, hyperparameters, policies
from bench.results_file import write_section

HEADING = "## Learning curves per policy (issue 18)"
CHECKPOINTS = (50_000, 100_000, 200_000, 500_000, 1_000_000, 2_048_000)


def curve(
    policy: str, algorithm: str, seed: int, maze_size: int, checkpoints: list[int], eval_mazes: int
) -> list[tuple[int, float, float]]:
    """(steps, success, path efficiency) before training and at each checkpoint, for one seed."""
    env = building.make_vec_env(maze_size, "random", seed, hyperparameters.default_n_envs(algorithm))
    model = building.build_model(algorithm, env, {}, seed, "cpu", 2048, policy=policy)
    seeds = maze_env.eval_maze_seeds(eval_mazes)
    points = []
    for target in [0, *checkpoints]:
        if target > model.num_timesteps:
            model.learn(target - model.num_timesteps, reset_num_timesteps=False)
        result = evaluation.evaluate(model, maze_size, seeds)
        points.append((target, result.success_rate, result.path_efficiency))
        print(
            json.dumps(
                {"policy": policy, "algorithm": algorithm, "seed": seed, "steps": target}
                | {"success": result.success_rate, "path_efficiency": result.path_efficiency}
            ),
            flush=True,
        )
    return points


def table(curves: dict[tuple[str, str], list[list[tuple[int, float, float]]]], checkpoints: list[int]) -> str:
    """Markdown: one row per checkpoint (0 = untrained), one "mean / min" column per (policy, algorithm)."""
    columns = sorted(curves)
    lines = [
        "| steps | " + " | ".join(f"{p} {a}" for p, a in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row, steps in enumerate([0, *checkpoints]):
        cells = []
        for column in columns:
            success = np.array([seed_curve[row][1] for seed_curve in curves[column]])
            cells.append(f"{success.mean():.1%} / {success.min():.1%}")
        lines.append(f"| {'untrained' if steps == 0 else f'{steps:,}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--policies", default=",".join(policies.POLICIES))
    parser.add_argument("--algorithms", default=",".join(hyperparameters.ALGORITHMS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--checkpoints", default=",".join(str(c) for c in CHECKPOINTS))
    parser.add_argument("--maze-size", type=int, default=10)
    parser.add_argument("--eval-mazes", type=int, default=1000)
    parser.add_argument("--write", action="store_true", help="replace this section of bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    curves: dict[tuple[str, str], list[list[tuple[int, float, float]]]] = {}
    for policy in args.policies.split(","):
        for algorithm in args.algorithms.split(","):
            curves[(policy, algorithm)] = [
                curve(policy, algorithm, seed, args.maze_size, checkpoints, args.eval_mazes) for seed in seeds
            ]
    section = "\n".join(
        [
            HEADING,
            "",
            f"`python bench/bench_learning_curves.py` at maze {args.maze_size}, random mode, seeds {seeds}, "
            f"{args.eval_mazes} held-out mazes per point; success as mean / min over the seeds; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{time.perf_counter() - started:.0f} s wall.",
            "",
            table(curves, checkpoints),
        ]
    )
    print(section)
    if args.write:
        write_section(HEADING, section)


if __name__ == "__main__":
    main()
