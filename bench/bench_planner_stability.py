"""Stability of the default `planner` policy: held-out success along one PPO run, and what moved inside it.

Issue 18: PPO with the service's defaults on random 10x10 mazes, training seed 1, fell from 100% held-out
success at 10k steps to ~0.5% at 164k-205k steps. This benchmark trains one (variant, seed) at a time with
the service's own ``build_model`` and, at every evaluation point, records:

- held-out success and path efficiency (deterministic policy, ``maze_env.eval_maze_seeds``: never trained
  on);
- ``planner_agreement``: on random (maze, agent cell) pairs of those held-out mazes, how often the argmax
  of the planner's four neighbour-value features is a shortest-path move. 1.0 means the features still
  point the right way, so a collapse with agreement ~1.0 is the head's doing, not the planner's;
- the planner's prior parameters (goal weight, step cost) and PPO's latest entropy / KL / clip fraction.

Variants (the service's defaults plus one change each):

- ``default``: ``policy="planner"`` with PPO also training the planner's prior (as shipped before issue 18).
- ``frozen``: the planner's reward map and step cost frozen (what DQN always did); PPO trains the heads.
- ``learned``: ``policy="planner_learned"`` (random planner initialisation, everything trained).

Usage (one experiment at a time on a shared machine; results go to a JSON-lines file)::

    python bench/bench_planner_stability.py --variant default --seed 1 --steps 204800 --out /tmp/s.jsonl
    python bench/bench_planner_stability.py --report /tmp/s.jsonl [more files] [--write]

``--write`` replaces this benchmark's section of bench/RESULTS.md with the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import maze_env
from agents import building, evaluation, hyperparameters
from bench.results_file import write_section
from mazes import grid
from rl_maze.planner import MazePlannerExtractor

HEADING = "## Planner stability (issue 18)"
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("planner", {"policy_kwargs": {"features_extractor_kwargs": {"learn_planner": True}}}),
    "frozen": ("planner", {"policy_kwargs": {"features_extractor_kwargs": {"learn_planner": False}}}),
    "learned": ("planner_learned", {}),
}


def planner_agreement(extractor: MazePlannerExtractor, maze_size: int, samples: int, seed: int) -> float:
    """Fraction of (held-out maze, agent cell) pairs where the planner's best neighbour is a shortest move.

    :param extractor: the model's planner.
    :param maze_size: cells per side.
    :param samples: pairs to check.
    :param seed: picks the agent cells.
    """
    rng = np.random.default_rng(seed)
    observations, good_moves = [], []
    for maze_seed in maze_env.eval_maze_seeds(samples):
        maze = grid.generate_maze(maze_size, maze_seed)
        goal = grid.square_to_cell(maze.goal)
        agent = goal
        while agent == goal:
            agent = (int(rng.integers(maze_size)), int(rng.integers(maze_size)))
        passages = grid.open_directions(maze)
        distances = maze_env.cell_distances_to_goal(maze)
        moves = [
            d
            for d, (dr, dc) in enumerate(maze_env.ACTION_DELTAS)
            if passages[d][agent] and distances[agent[0] + dr, agent[1] + dc] == distances[agent] - 1
        ]
        observations.append(maze_env.encode_observation(passages, agent, goal))
        good_moves.append(moves)
    batch = torch.as_tensor(np.stack(observations), dtype=torch.float32)
    with torch.no_grad():
        best = extractor(batch)[:, :4].argmax(dim=1).tolist()
    return float(np.mean([b in moves for b, moves in zip(best, good_moves, strict=True)]))


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def run(variant: str, seed: int, steps: int, eval_every: int, eval_mazes: int, out: Path) -> None:
    """Train one (variant, seed), evaluating every ``eval_every`` steps; one JSON line per point."""
    policy, overrides = VARIANTS[variant]
    maze_size = 10
    env = building.make_vec_env(maze_size, "random", seed, hyperparameters.default_n_envs("PPO"))
    model = building.build_model("PPO", env, overrides, seed, "cpu", 2048, policy=policy)
    extractor = model.policy.features_extractor
    assert isinstance(extractor, MazePlannerExtractor)
    seeds = maze_env.eval_maze_seeds(eval_mazes)
    train_wall = 0.0
    started_cpu = time.process_time()
    while True:
        result = evaluation.evaluate(model, maze_size, seeds)
        logged = model.logger.name_to_value
        point = {
            "variant": variant,
            "policy": policy,
            "seed": seed,
            "timesteps": model.num_timesteps,
            "success_rate": result.success_rate,
            "path_efficiency": result.path_efficiency,
            "planner_agreement": planner_agreement(extractor, maze_size, 200, seed=0),
            "goal_weight": float(extractor.goal_weight.detach()),
            "step_cost": float(torch.nn.functional.softplus(extractor.raw_step_cost.detach()) + 1e-3),
            "entropy_loss": _number(logged.get("train/entropy_loss")),
            "approx_kl": _number(logged.get("train/approx_kl")),
            "clip_fraction": _number(logged.get("train/clip_fraction")),
            "value_loss": _number(logged.get("train/value_loss")),
            "train_wall_s": round(train_wall, 1),
            "cpu_s": round(time.process_time() - started_cpu, 1),
            "load_1m": os.getloadavg()[0],
        }
        print(json.dumps(point), flush=True)
        with out.open("a") as file:
            file.write(json.dumps(point) + "\n")
        if model.num_timesteps >= steps:
            break
        started = time.perf_counter()
        model.learn(eval_every, reset_num_timesteps=False)
        train_wall += time.perf_counter() - started


def report(paths: list[Path], notes: str = "") -> str:
    """A markdown section from JSON-lines files written by ``run``, with ``notes`` (findings) on top."""
    points = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for point in points:
        runs.setdefault((point["variant"], point["seed"]), []).append(point)
    lines = [
        HEADING,
        "",
        "`python bench/bench_planner_stability.py` (PPO, random 10x10 mazes, the service's defaults but for "
        "the variant, 16 envs, 2,048 steps per iteration; held-out success of the deterministic policy on "
        "the first 200 evaluation mazes; `agree` = share of held-out (maze, cell) pairs where the planner "
        "features' best neighbour is a shortest-path move; 1 torch thread).",
        "",
        *([notes.strip(), ""] if notes.strip() else []),
        "| variant | seed | steps | success | path eff. | agree | goal weight | step cost | entropy loss "
        "| approx KL | train wall (s) | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (variant, seed), run_points in sorted(runs.items()):
        for p in sorted(run_points, key=lambda q: q["timesteps"]):
            entropy = "-" if p["entropy_loss"] is None else f"{p['entropy_loss']:.3f}"
            kl = "-" if p["approx_kl"] is None else f"{p['approx_kl']:.4f}"
            lines.append(
                f"| {variant} | {seed} | {p['timesteps']:,} | {p['success_rate']:.1%} | "
                f"{p['path_efficiency']:.3f} | {p['planner_agreement']:.1%} | {p['goal_weight']:.2f} | "
                f"{p['step_cost']:.3f} | {entropy} | {kl} | {p['train_wall_s']:.0f} | {p['load_1m']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=204_800)
    parser.add_argument("--eval-every", type=int, default=20_480)
    parser.add_argument("--eval-mazes", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("planner_stability.jsonl"))
    parser.add_argument("--report", type=Path, nargs="*", help="render these JSON-lines files instead")
    parser.add_argument("--notes", type=Path, help="with --report: a markdown file of findings to include")
    parser.add_argument("--write", action="store_true", help="with --report: write bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.report:
        section = report(args.report, args.notes.read_text() if args.notes else "")
        print(section)
        if args.write:
            write_section(HEADING, section)
        return
    run(args.variant, args.seed, args.steps, args.eval_every, args.eval_mazes, args.out)


if __name__ == "__main__":
    main()
