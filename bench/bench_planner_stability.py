"""Stability of the default `planner` policy: held-out success along one PPO or DQN run, and what moved.

Issue 18: once a run first reaches >= 95% held-out success it must never fall below 90% at a later
evaluation point. PPO with the service's defaults on random 10x10 mazes, training seed 1, fell from 100%
at 10k steps to ~0.5% at 164k-205k steps; DQN with the service's defaults fell from 100% to 0% for
stretches after ~30k steps (bench/RESULTS.md "Hyperparameter sweep"). This benchmark trains one (variant,
seed) at a time with the service's own ``make_vec_env`` / ``build_model`` (its n_envs and defaults, the
user's overrides on top, one ``learn()`` call over the whole budget as a run does) and, at every
evaluation point, records:

- held-out success and path efficiency (deterministic policy, ``maze_env.eval_maze_seeds``: never trained
  on);
- ``planner_agreement``: on random (maze, agent cell) pairs of those held-out mazes, how often the argmax
  of the planner's four neighbour-value features is a shortest-path move. 1.0 means the features still
  point the right way, so a collapse with agreement ~1.0 is the head's doing, not the planner's;
- the planner's prior parameters (goal weight, step cost) and the algorithm's latest training statistics.

Variants (the service's defaults plus one change each; ``--set key=value`` adds hyperparameter overrides):

- ``service``: exactly what a run with ``{"policy": "planner"}`` builds.
- ``default``: ``policy="planner"`` with the algorithm also training the planner's prior (as PPO shipped
  before issue 18).
- ``frozen``: the planner's reward map and step cost frozen (now the ``planner`` default).
- ``learned``: ``policy="planner_learned"`` (random planner initialisation, everything trained).

Usage (one experiment at a time on a shared machine; results go to a JSON-lines file)::

    python bench/bench_planner_stability.py --variant default --seed 1 --steps 204800 --out /tmp/s.jsonl
    python bench/bench_planner_stability.py --algorithm DQN --variant service --set learning_rate=2e-4 \
        --seed 1 --steps 80000 --eval-every 4000 --early-every 1000 --out /tmp/d.jsonl
    python bench/bench_planner_stability.py --report /tmp/s.jsonl [more files] [--write]

``--write`` replaces this benchmark's section of bench/RESULTS.md (or the one named by ``--heading``) with
the report. The PPO part of that section was written by an earlier version (separate ``learn()`` calls per
evaluation point; its JSON lines were not kept), so render DQN as a subsection: ``--heading "### DQN"``
without ``--write``, and paste it under the PPO part.
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
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import maze_env
from agents import building, evaluation, hyperparameters
from bench.planner_stability_report import COLLAPSE, TARGET, report, variant_label
from bench.results_file import write_section
from mazes import grid
from rl_maze.planner import MazePlannerExtractor

HEADING = "## Planner stability (issue 18)"
MAZE_SIZE = 10
TIMESTEPS_PER_EPISODE = 2048  # the iteration length of the runs (PPO's rollout; DQN ignores it)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "service": ("planner", {}),
    "default": ("planner", {"policy_kwargs": {"features_extractor_kwargs": {"learn_planner": True}}}),
    "frozen": ("planner", {"policy_kwargs": {"features_extractor_kwargs": {"learn_planner": False}}}),
    "learned": ("planner_learned", {}),
}
LOGGED = ("entropy_loss", "approx_kl", "clip_fraction", "value_loss", "loss", "n_updates")


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


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``["learning_rate=2e-4", "batch_size=64"]`` -> overrides, each value read as JSON (numbers, bools).

    :param pairs: ``key=value`` strings; keys must be hyperparameters a user may set.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        overrides[key.strip()] = json.loads(value)
    return overrides


def extractor_of(model: BaseAlgorithm) -> MazePlannerExtractor:
    """The planner inside a PPO policy or a DQN's online Q-network."""
    policy: Any = model.policy
    extractor = policy.q_net.features_extractor if hasattr(policy, "q_net") else policy.features_extractor
    assert isinstance(extractor, MazePlannerExtractor)
    return extractor


class _Recorder(BaseCallback):
    """Evaluates at every ``every`` steps (``early`` until the run first reaches ``TARGET``), between a
    training step and the next rollout, and appends one JSON line per point to ``out``."""

    def __init__(
        self,
        label: dict[str, Any],
        every: tuple[int, int],
        seeds: list[int],
        out: Path,
        maze_size: int = MAZE_SIZE,
    ) -> None:
        super().__init__()
        self.label, (self.every, self.early), self.seeds, self.out = label, every, seeds, out
        self.maze_size = maze_size
        self.next_at = 0
        self.last_at = -1
        self.reached = False
        self.stop_on_collapse = False
        self.collapsed = False
        self.eval_wall = 0.0
        self.started = time.perf_counter()
        self.started_cpu = time.process_time()

    def record(self) -> None:
        model = self.model
        started = time.perf_counter()
        result = evaluation.evaluate(model, self.maze_size, self.seeds)
        extractor = extractor_of(model)
        logged = model.logger.name_to_value
        point = {
            **self.label,
            "timesteps": model.num_timesteps,
            "success_rate": result.success_rate,
            "path_efficiency": result.path_efficiency,
            "planner_agreement": planner_agreement(extractor, self.maze_size, 200, seed=0),
            "goal_weight": float(extractor.goal_weight.detach()),
            "step_cost": float(torch.nn.functional.softplus(extractor.raw_step_cost.detach()) + 1e-3),
            **{key: _number(logged.get(f"train/{key}")) for key in LOGGED},
            "exploration_rate": _number(getattr(model, "exploration_rate", None)),
            "train_wall_s": round(time.perf_counter() - self.started - self.eval_wall, 1),
            "cpu_s": round(time.process_time() - self.started_cpu, 1),
            "load_1m": os.getloadavg()[0],
        }
        self.eval_wall += time.perf_counter() - started
        print(json.dumps(point), flush=True)
        with self.out.open("a") as file:
            file.write(json.dumps(point) + "\n")
        self.last_at = model.num_timesteps
        self.collapsed = self.reached and result.success_rate < COLLAPSE
        self.reached = self.reached or result.success_rate >= TARGET
        step = self.every if self.reached else self.early
        self.next_at = (model.num_timesteps // step + 1) * step

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self.next_at:
            self.record()

    def _on_step(self) -> bool:
        return not (self.stop_on_collapse and self.collapsed)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def run(
    algorithm: str,
    variant: str,
    sets: dict[str, Any],
    seed: int,
    steps: int,
    every: tuple[int, int],
    eval_mazes: int,
    out: Path,
    stop_on_collapse: bool = False,
    maze_size: int = MAZE_SIZE,
) -> None:
    """Train one (variant, seed) for ``steps`` in one ``learn()``, evaluating every ``every[0]`` steps
    (``every[1]`` until first at ``TARGET``) and at the end; one JSON line per point. With
    ``stop_on_collapse`` the run ends at its first point below ``COLLAPSE`` after ``TARGET`` (the verdict
    is known then)."""
    policy, overrides = VARIANTS[variant]
    env = building.make_vec_env(maze_size, "random", seed, hyperparameters.default_n_envs(algorithm))
    model = building.build_model(
        algorithm, env, {**overrides, **sets}, seed, "cpu", TIMESTEPS_PER_EPISODE, policy=policy
    )
    label = {
        "algorithm": algorithm,
        "variant": variant_label(variant, sets) + ("" if maze_size == MAZE_SIZE else f" maze {maze_size}"),
        "policy": policy,
        "seed": seed,
        "hyperparameters": {
            k: v
            for k, v in hyperparameters.effective_hyperparameters(model, algorithm).items()
            if k != "policy_kwargs"
        },
    }
    recorder = _Recorder(label, every, maze_env.eval_maze_seeds(eval_mazes), out, maze_size)
    recorder.stop_on_collapse = stop_on_collapse
    model.learn(steps, callback=recorder)
    if recorder.last_at != model.num_timesteps and not (stop_on_collapse and recorder.collapsed):
        recorder.record()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--algorithm", choices=hyperparameters.ALGORITHMS, default="PPO")
    parser.add_argument(
        "--variant", choices=sorted(VARIANTS), default=None, help="PPO: default, DQN: service"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override (repeat)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--maze-size", type=int, default=MAZE_SIZE, help="cells per side")
    parser.add_argument("--steps", type=int, default=204_800)
    parser.add_argument("--eval-every", type=int, default=20_480)
    parser.add_argument("--early-every", type=int, help="evaluate this often until first >= 95%%")
    parser.add_argument("--eval-mazes", type=int, default=200)
    parser.add_argument("--stop-on-collapse", action="store_true", help="end at the first point < 90%%")
    parser.add_argument("--out", type=Path, default=Path("planner_stability.jsonl"))
    parser.add_argument("--report", type=Path, nargs="*", help="render these JSON-lines files instead")
    parser.add_argument("--notes", type=Path, help="with --report: a markdown file of findings to include")
    parser.add_argument("--write", action="store_true", help="with --report: write bench/RESULTS.md")
    parser.add_argument("--heading", default=HEADING, help="with --report: e.g. a '### ' subsection's")
    parser.add_argument("--brief", action="store_true", help="with --report: no per-point statistics")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.report:
        notes = args.notes.read_text() if args.notes else ""
        section = report(args.heading, args.report, notes, details=not args.brief)
        print(section)
        if args.write:
            write_section(args.heading, section)
        return
    variant = args.variant or ("default" if args.algorithm == "PPO" else "service")
    sets = parse_sets(args.set)
    hyperparameters.HYPERPARAMETER_MODELS[args.algorithm].model_validate(sets)  # a typo fails here
    every = (args.eval_every, args.early_every or args.eval_every)
    run(
        args.algorithm,
        variant,
        sets,
        args.seed,
        args.steps,
        every,
        args.eval_mazes,
        args.out,
        args.stop_on_collapse,
        args.maze_size,
    )


if __name__ == "__main__":
    main()
