"""Learning curves per policy (issue 18): held-out success at fixed step counts, mean and min over seeds.

For each (policy, algorithm) and each training seed, one model is built with the service's
``build_model`` (random mazes, the service's defaults) and trained in one ``learn()`` over the run's
budget (``--budget``, the README request's 2.048M steps by default, so that exploration and learning-rate
schedules are those of a real run), stopped after the last checkpoint. Before training (the untrained
model, the table's first row) and at the first rollout boundary at or after each checkpoint, its
deterministic policy plays ``--eval-mazes`` held-out mazes (``maze_env.eval_maze_seeds``: never trained
on). Each point is a JSON line (``--out``); ``--report`` renders the table from such files, so slices can
run side by side (one per core). The table shows, per checkpoint, the mean and the minimum success over
the seeds measured there (the issue's targets are per seed, so the minimum is the number to read).

The issue's full table (4 policies x PPO/DQN x 5 seeds up to 2.048M steps at maze 10) is tens of
CPU-hours (`cnn` trains at a few hundred steps/s on 2 cores); run slices::

    python bench/bench_learning_curves.py --policies cnn --algorithms PPO --seeds 0,1,2 \
        --checkpoints 50000,100000,200000 --eval-mazes 200 --out cnn-ppo.jsonl
    python bench/bench_learning_curves.py --report *.jsonl [--write]   # the table (and RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import maze_env
from agents import building, evaluation, hyperparameters, policies
from bench.results_file import write_section

HEADING = "## Learning curves per policy (issue 18)"
CHECKPOINTS = (50_000, 100_000, 200_000, 500_000, 1_000_000, 2_048_000)
BUDGET = 2_048_000  # the README request: 1,000 iterations x 2,048 steps
TIMESTEPS_PER_EPISODE = 2048


class _Checkpoints(BaseCallback):
    """Evaluates at the first rollout boundary at or after each checkpoint; ends ``learn()`` after it."""

    def __init__(self, checkpoints: list[int], record: Any) -> None:
        super().__init__()
        self.pending, self.record = list(checkpoints), record

    def _on_rollout_start(self) -> None:
        while self.pending and self.num_timesteps >= self.pending[0]:
            self.record(self.pending.pop(0), self.model)

    def _on_step(self) -> bool:
        return bool(self.pending)


def curve(
    policy: str,
    algorithm: str,
    seed: int,
    maze_size: int,
    checkpoints: list[int],
    eval_mazes: int,
    budget: int = BUDGET,
    out: Path | None = None,
    lr_decay: bool = False,
) -> list[dict[str, Any]]:
    """One point per checkpoint (and the untrained model's, at step 0) for one seed; each also appended
    to ``out`` as a JSON line.

    :param lr_decay: the default learning rate decays linearly to 0 over the budget (SB3's schedule);
        the points are then marked ``"variant": "linear_lr"`` and get a column of their own.
    """
    env = building.make_vec_env(maze_size, "random", seed, hyperparameters.default_n_envs(algorithm))
    model = building.build_model(algorithm, env, {}, seed, "cpu", TIMESTEPS_PER_EPISODE, policy=policy)
    variant = None
    if lr_decay:
        start_rate = float(model.learning_rate)  # type: ignore[arg-type]  # a float by default
        model.learning_rate = lambda progress_remaining: start_rate * progress_remaining
        model._setup_lr_schedule()
        variant = "linear_lr"
    seeds = maze_env.eval_maze_seeds(eval_mazes)
    points: list[dict[str, Any]] = []
    started = time.perf_counter()

    def record(checkpoint: int, trained: BaseAlgorithm) -> None:
        result = evaluation.evaluate(trained, maze_size, seeds)
        point = {
            "policy": policy,
            "algorithm": algorithm,
            "seed": seed,
            "maze_size": maze_size,
            "budget": budget,
            "eval_mazes": eval_mazes,
            "checkpoint": checkpoint,
            "steps": trained.num_timesteps,
            "success": result.success_rate,
            "path_efficiency": result.path_efficiency,
            "wall_s": round(time.perf_counter() - started, 1),
        }
        if variant is not None:
            point["variant"] = variant
        points.append(point)
        print(json.dumps(point), flush=True)
        if out is not None:
            with out.open("a") as file:
                file.write(json.dumps(point) + "\n")

    record(0, model)
    wanted = [c for c in checkpoints if 0 < c <= budget]
    if wanted:
        callback = _Checkpoints(wanted, record)
        model.learn(budget, callback=callback)
        for checkpoint in callback.pending:  # past the last rollout boundary: the model at the budget's end
            record(checkpoint, model)
    return points


def table(points: list[dict[str, Any]]) -> str:
    """Markdown: one row per checkpoint (untrained first), one "mean / min (seeds)" cell per (policy,
    algorithm); a blank cell where that column has no point."""
    by_cell: dict[tuple[str, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for point in points:
        column = (point["policy"], point["algorithm"], point.get("variant") or "")
        by_cell[column][point["checkpoint"]].append(point["success"])
    columns = sorted(by_cell)
    rows = sorted({checkpoint for cells in by_cell.values() for checkpoint in cells})
    lines = [
        "| steps | " + " | ".join(f"`{p}` {a}" + (f" ({v})" if v else "") for p, a, v in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for steps in rows:
        cells = []
        for column in columns:
            success = np.array(by_cell[column].get(steps, []))
            cells.append(
                f"{success.mean():.1%} / {success.min():.1%} ({len(success)})" if len(success) else ""
            )
        lines.append(f"| {'untrained' if steps == 0 else f'{steps:,}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_points(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--policies", default=",".join(policies.POLICIES))
    parser.add_argument("--algorithms", default=",".join(hyperparameters.ALGORITHMS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--checkpoints", default=",".join(str(c) for c in CHECKPOINTS))
    parser.add_argument("--budget", type=int, default=BUDGET, help="the run's learn() total (schedules)")
    parser.add_argument("--maze-size", type=int, default=10)
    parser.add_argument("--eval-mazes", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="append each point here as a JSON line")
    parser.add_argument("--report", type=Path, nargs="*", help="render the table from these files instead")
    parser.add_argument("--notes", type=Path, help="with --report: a markdown file to put under the table")
    parser.add_argument("--write", action="store_true", help="replace this section of bench/RESULTS.md")
    parser.add_argument("--lr-decay", action="store_true", help="learning rate linear to 0 over the budget")
    args = parser.parse_args()
    if args.report:
        measured = read_points(args.report)
        about = sorted({(p["maze_size"], p["eval_mazes"], p["budget"]) for p in measured})
        intro = (
            "`python bench/bench_learning_curves.py` (the service's build path and defaults, random mazes, "
            "one `learn()` over the run's budget, stopped after the last checkpoint; held-out success of "
            "the deterministic policy). Each cell: mean / min over the seeds (their number). "
            + "; ".join(f"maze {m}, {e} held-out mazes per point, budget {b:,} steps" for m, e, b in about)
            + "."
        )
        notes = args.notes.read_text().strip() if args.notes else ""
        section = "\n".join([HEADING, "", intro, "", table(measured), "", notes]).rstrip() + "\n"
        print(section)
        if args.write:
            write_section(HEADING, section)
        return
    torch.set_num_threads(1)
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    points: list[dict[str, Any]] = []
    for policy in args.policies.split(","):
        for algorithm in args.algorithms.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                points += curve(
                    policy,
                    algorithm,
                    seed,
                    args.maze_size,
                    checkpoints,
                    args.eval_mazes,
                    args.budget,
                    args.out,
                    args.lr_decay,
                )
    print(table(points))


if __name__ == "__main__":
    main()
