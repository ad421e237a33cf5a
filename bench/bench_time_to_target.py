"""Time to target: how long the README's request takes when it stops at `target_success_rate` 0.95, and
what periodic held-out evaluation costs in training speed.

Each run is the real job (`training.job.TrainingJob`, the code every executor runs) on a real SQLite
store with MLflow off, in this process, with the service's defaults (TORCH_THREADS=1, EVAL_EPISODES=100,
adaptive evaluation interval, default n_envs and hyperparameters): the same request a user sends to
`POST /training/start`, minus the HTTP layer and MLflow. Measured:

* **Time to target**: PPO and DQN, maze 10 (``--maze-sizes``), random mode, 3 training seeds each, the request
  `total_episodes=1000 × timesteps_per_episode=2048` with `target_success_rate=0.95`; wall time, CPU time
  and environment steps until the job ends (`stop_reason` `target_reached`), including building the
  model and exporting ONNX. A run that has not reached the target after `--cap-steps` steps (or
  `--cap-s` seconds) is stopped and reported as such. The full budget (2.048M steps) is **not** run: its
  time is projected as budget ÷ the run's measured steps/s.
* **Evaluation overhead**: the same request without a target, over `--overhead-episodes` iterations,
  with periodic evaluation (EVAL_EPISODES=100) and without (EVAL_EPISODES=0), interleaved on the same
  seeds (with/without, then without/with, ...); training steps/s = steps ÷ (job wall − ONNX export).

Results go to the "## Time to target" section of bench/RESULTS.md
(``python -m bench.bench_time_to_target``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bench_learning import machine_info
from bench.bench_planner_stability import parse_sets
from bench.time_to_target_job import TARGET, TOTAL_EPISODES, JobResult, run_job
from bench.time_to_target_report import HEADING, merge, options, render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--algorithms", default="PPO,DQN")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--maze-sizes", type=int, nargs="+", default=[10], help="time-to-target maze sizes")
    parser.add_argument("--cap-steps", type=int, default=300_000, help="stop a run that has not ended")
    parser.add_argument("--cap-s", type=float, default=600.0, help="stop a run after this wall time")
    parser.add_argument("--overhead-algorithms", default="PPO")
    parser.add_argument("--overhead-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--overhead-episodes", type=int, default=15, help="iterations per overhead run")
    parser.add_argument("--skip-target", action="store_true", help="only the overhead pairs")
    parser.add_argument("--skip-overhead", action="store_true", help="only the time-to-target runs")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=[],
        help="write the section from these --json files of invocations run at the same time (one with "
        "--skip-overhead, one with --skip-target), instead of running anything",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a hyperparameter override for every time-to-target run (repeat), as in a request",
    )
    parser.add_argument("--json", default="", help="also write the raw results here")
    parser.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    args = parser.parse_args()

    if args.merge:
        merge(args.merge, args.no_write)
        return
    overrides = parse_sets(args.set)
    load_start = os.getloadavg()
    started = datetime.now(UTC)
    info = machine_info(threads=1)
    print(json.dumps(info), flush=True)
    target_results: list[JobResult] = []
    overhead_results: list[JobResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-ttt-") as scratch:
        count = 0

        def job(**kwargs: Any) -> JobResult:
            nonlocal count
            count += 1
            result = run_job(Path(scratch) / f"job{count}", **kwargs)
            print(json.dumps(dataclasses.asdict(result)), flush=True)
            return result

        if not args.skip_target:
            for algorithm in args.algorithms.split(","):
                for maze_size, seed in itertools.product(args.maze_sizes, args.seeds):
                    target_results.append(
                        job(
                            algorithm=algorithm,
                            seed=seed,
                            maze_size=maze_size,
                            total_episodes=TOTAL_EPISODES,
                            target=TARGET,
                            eval_episodes=100,
                            cap_steps=args.cap_steps,
                            cap_s=args.cap_s,
                            hyperparameters=overrides,
                        )
                    )
        for algorithm in [] if args.skip_overhead else args.overhead_algorithms.split(","):
            for i, seed in enumerate(args.overhead_seeds):
                # ABBA order: drift of the machine's load falls on both configurations alike.
                for evaluation in (True, False) if i % 2 == 0 else (False, True):
                    overhead_results.append(
                        job(
                            algorithm=algorithm,
                            seed=seed,
                            total_episodes=args.overhead_episodes,
                            target=None,
                            eval_episodes=100 if evaluation else 0,
                            cap_steps=10**12,
                            cap_s=args.cap_s,
                        )
                    )
    load_end = os.getloadavg()
    ended = datetime.now(UTC)
    if args.json:
        raw = {
            "machine": info,
            "started": started.isoformat(),
            "ended": ended.isoformat(),
            "load_start": load_start,
            "load_end": load_end,
            "args": vars(args),
            "target": [dataclasses.asdict(r) for r in target_results],
            "overhead": [dataclasses.asdict(r) for r in overhead_results],
        }
        Path(args.json).write_text(json.dumps(raw, indent=1))
    section = render(
        args, info, started, ended, load_start, load_end, target_results, overhead_results, [options(args)]
    )
    print(section)
    if not args.no_write:
        from bench.results_file import write_section

        write_section(HEADING, section)


if __name__ == "__main__":
    main()
