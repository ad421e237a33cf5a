"""The planner's per-maze value memo (agent-blind reward map) against the reward map that sees the agent.

Issue 19's large-maze targets: evaluating 100 held-out 30x30 mazes in <= 10 s on 2 cores, and training at
30x30 within 4x of 10x10. With the agent on the reward map, a frozen planner's value map changes with
every position, so each new position of each agent is planned again (up to K = 271 sweeps at 30x30);
agent-blind, the value map is one per maze, planned once and read at every position.

Both variants are the service's default ``planner`` policy with its default hyperparameters, built the
same way; only the extractor's ``agent_blind`` differs. For each algorithm, maze size and training seed,
the two are measured back to back in this process (alternating which goes first), one torch thread:

* training env steps/s over ``--steps`` steps (``learn()``, random mode, 16 envs);
* the held-out evaluation the service runs: 100 mazes never trained on (``maze_env.eval_maze_seeds``),
  deterministic, its wall time, success rate and path efficiency.

``python -m bench.bench_value_memo`` writes the "## Value memo" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import torch

import maze_env
from agents import building, evaluation, hyperparameters
from bench.machine import load_average, log, machine_line
from bench.results_file import write_section

HEADING = "## Value memo"


@contextmanager
def reward_map_sees_agent(sees: bool) -> Iterator[None]:
    """Build ``planner`` models whose reward map sees the agent (the old network) while inside."""
    original = hyperparameters.policy_kwargs

    def patched(policy: str, algorithm: str) -> dict[str, Any]:
        kwargs = original(policy, algorithm)
        extractor = {**kwargs["features_extractor_kwargs"], "agent_blind": not sees}
        return {**kwargs, "features_extractor_kwargs": extractor}

    hyperparameters.policy_kwargs = patched
    try:
        yield
    finally:
        hyperparameters.policy_kwargs = original


def measure(algorithm: str, maze_size: int, seed: int, steps: int, sees_agent: bool) -> dict[str, Any]:
    """Train one model and evaluate it on 100 held-out mazes."""
    with reward_map_sees_agent(sees_agent):
        env = building.make_vec_env(maze_size, "random", seed, hyperparameters.default_n_envs(algorithm))
        model = building.build_model(algorithm, env, {}, seed=seed, device="cpu", timesteps_per_episode=2048)
    started = time.perf_counter()
    model.learn(total_timesteps=steps)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    result = evaluation.evaluate(model, maze_size, maze_env.eval_maze_seeds(100))
    eval_s = time.perf_counter() - started
    return {
        "algorithm": algorithm,
        "maze": maze_size,
        "seed": seed,
        "variant": "sees the agent (before)" if sees_agent else "agent-blind, value memo",
        "steps_per_s": model.num_timesteps / train_s,
        "eval_s": eval_s,
        "success": result.success_rate,
        "efficiency": result.path_efficiency,
    }


def report(rows: list[dict[str, Any]], args: argparse.Namespace, started: str, load_start: str) -> str:
    lines = [
        HEADING,
        "",
        f"Measured {started} with `python -m bench.bench_value_memo --algorithms {' '.join(args.algorithms)} "
        f"--maze-sizes {' '.join(map(str, args.maze_sizes))} --seeds {' '.join(map(str, args.seeds))} "
        f"--steps {args.steps}`.",
        f"{machine_line()} Load average (1/5/15 min) at start {load_start}, at end {load_average()}.",
        "",
        "Both variants: the default `planner` policy and hyperparameters, 16 envs, random mode, one torch "
        "thread, trained `--steps` env steps, then the service's held-out evaluation (100 mazes never "
        "trained on, deterministic). Measured back to back per seed (alternating which goes first).",
        "",
        "| algo | maze | seed | reward map | train steps/s | eval 100 held-out mazes (s) | held-out success "
        "| path efficiency |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['algorithm']} | {row['maze']} | {row['seed']} | {row['variant']} "
            f"| {row['steps_per_s']:,.0f} | {row['eval_s']:.1f} | {row['success']:.0%} "
            f"| {row['efficiency']:.2f} |"
        )
    lines.append("")
    for algorithm in args.algorithms:
        for maze_size in args.maze_sizes:
            pairs = [r for r in rows if r["algorithm"] == algorithm and r["maze"] == maze_size]
            before = [r for r in pairs if r["variant"].startswith("sees")]
            after = [r for r in pairs if not r["variant"].startswith("sees")]
            speed = [a["steps_per_s"] / b["steps_per_s"] for a, b in zip(after, before, strict=True)]
            evals = [b["eval_s"] / a["eval_s"] for a, b in zip(after, before, strict=True)]
            lines.append(
                f"- **{algorithm}, maze {maze_size}**: training {min(speed):.2f}-{max(speed):.2f}x the "
                f"steps/s, evaluation {min(evals):.1f}-{max(evals):.1f}x faster (slowest agent-blind "
                f"evaluation {max(a['eval_s'] for a in after):.1f} s); held-out success, worst seed: "
                f"{min(a['success'] for a in after):.0%} agent-blind, "
                f"{min(b['success'] for b in before):.0%} before."
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=["PPO", "DQN"])
    parser.add_argument("--maze-sizes", nargs="+", type=int, default=[10, 30])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=16_384)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    load_start = load_average()
    rows: list[dict[str, Any]] = []
    for algorithm in args.algorithms:
        for maze_size in args.maze_sizes:
            for index, seed in enumerate(args.seeds):
                order = (True, False) if index % 2 == 0 else (False, True)
                pair = {}
                for sees_agent in order:
                    pair[sees_agent] = measure(algorithm, maze_size, seed, args.steps, sees_agent)
                    log(str(pair[sees_agent]))
                rows += [pair[True], pair[False]]
    section = report(rows, args, started, load_start)
    print(section)
    if not args.no_write:
        write_section(HEADING, section)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
