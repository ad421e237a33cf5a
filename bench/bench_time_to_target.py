"""Time to target: how long the README's request takes when it stops at `target_success_rate` 0.95, and
what periodic held-out evaluation costs in training speed.

Each run is the real job (`training.job.TrainingJob`, the code every executor runs) on a real SQLite
store with MLflow off, in this process, with the service's defaults (TORCH_THREADS=1, EVAL_EPISODES=100,
adaptive evaluation interval, default n_envs and hyperparameters): the same request a user sends to
`POST /training/start`, minus the HTTP layer and MLflow. Measured:

* **Time to target**: PPO and DQN, maze 10, random mode, 3 training seeds each, the request
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
import json
import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from agents.hyperparameters import default_n_envs
from bench.bench_learning import machine_info
from core.settings import Settings
from records.database import create_db_engine, make_session_factory, upgrade_schema
from records.store import EvaluationState, NewRun, RunStore
from training import evaluation_callback
from training.job import JobControl, TrainingJob

HEADING = "## Time to target"
TARGET = 0.95
MAZE_SIZE = 10
TOTAL_EPISODES = 1000
TIMESTEPS_PER_EPISODE = 2048
BUDGET = TOTAL_EPISODES * TIMESTEPS_PER_EPISODE


class TimedStore(RunStore):
    """The real store, noting when each evaluation was recorded (for the held-out curve of a run)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.perf_counter()
        self.evaluations: list[tuple[float, EvaluationState]] = []

    def record_evaluation(self, run_id: str, state: EvaluationState) -> None:
        self.evaluations.append((time.perf_counter() - self.started, state))
        super().record_evaluation(run_id, state)


@dataclasses.dataclass(frozen=True)
class JobResult:
    """One job's outcome as measured here."""

    algorithm: str
    seed: int
    evaluation: bool
    status: str
    stop_reason: str | None
    timesteps: int
    wall_s: float
    cpu_s: float
    onnx_s: float
    best_eval_success_rate: float | None
    evaluations: list[tuple[float, int, float]]  # (wall s since start, timestep, held-out success)
    capped: bool
    eval_wall_s: float | None = None  # time inside held-out evaluations (None: not timed)
    eval_cpu_s: float | None = None
    fps: float | None = None  # the run's own steps/s as status reports it (learn() only, evaluations in)

    @property
    def training_steps_per_s(self) -> float:
        return self.timesteps / max(self.wall_s - self.onnx_s, 1e-9)

    @property
    def projection_steps_per_s(self) -> float:
        """Steps/s to project a full budget from: the run's training rate, evaluations included, without
        the fixed costs (building the model, exporting ONNX) that a short run is mostly made of."""
        return self.fps or self.training_steps_per_s


def run_job(
    data_dir: Path,
    algorithm: str,
    seed: int,
    total_episodes: int,
    target: float | None,
    eval_episodes: int,
    cap_steps: int,
    cap_s: float,
) -> JobResult:
    """Run one job to its end, stopping it (as a user's stop would) past the caps."""
    settings = Settings(
        data_dir=data_dir,
        mlflow_enabled=False,
        eval_episodes=eval_episodes,
        progress_interval_s=1.0,
        log_level="WARNING",
    )
    torch.set_num_threads(settings.torch_threads)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(settings.database_url)
    upgrade_schema(engine)
    store = TimedStore(make_session_factory(engine))
    new_run = NewRun(
        algorithm=algorithm,
        total_episodes=total_episodes,
        timesteps_per_episode=TIMESTEPS_PER_EPISODE,
        maze_size=MAZE_SIZE,
        maze_mode="random",
        seed=seed,
        n_envs=default_n_envs(algorithm),
        device_requested="cpu",
        hyperparameters={},
        target_success_rate=target,
        eval_episodes=eval_episodes,  # as the service resolves a request without one: EVAL_EPISODES
    )
    store.create(new_run)
    run = store.claim_next_queued("bench:1:job", max_running=1)
    assert run is not None
    control = JobControl()
    capped = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(1.0):
            too_long = time.perf_counter() - store.started > cap_s
            if too_long or store.get(run.id).timesteps >= cap_steps:
                capped.set()
                control.stop.set()
                return

    # Time the evaluations themselves (the real function, wrapped), to compare time in and out of them
    # within the same run: load drift cannot bias that comparison.
    in_evaluation = [0.0, 0.0]

    def timed_evaluate(*args: Any, **kwargs: Any) -> Any:
        began, cpu_began = time.perf_counter(), time.thread_time()
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            in_evaluation[0] += time.perf_counter() - began
            in_evaluation[1] += time.thread_time() - cpu_began

    real_evaluate = evaluation_callback.evaluate
    evaluation_callback.evaluate = timed_evaluate
    watcher = threading.Thread(target=watch, daemon=True)
    store.started, cpu_started = time.perf_counter(), time.process_time()
    watcher.start()
    try:
        TrainingJob(settings, store, None, run, control).execute()
    finally:
        done.set()
        evaluation_callback.evaluate = real_evaluate
    wall, cpu = time.perf_counter() - store.started, time.process_time() - cpu_started
    watcher.join()
    record = store.get(run.id)
    engine.dispose()
    return JobResult(
        algorithm=algorithm,
        seed=seed,
        evaluation=eval_episodes > 0,
        status=record.status,
        stop_reason=record.stop_reason,
        timesteps=record.timesteps,
        wall_s=wall,
        cpu_s=cpu,
        onnx_s=record.onnx_export_seconds or 0.0,
        best_eval_success_rate=record.best_eval_success_rate,
        evaluations=[(t, s.eval_timesteps, s.eval_success_rate) for t, s in store.evaluations],
        capped=capped.is_set(),
        eval_wall_s=in_evaluation[0],
        eval_cpu_s=in_evaluation[1],
        fps=record.fps,
    )


def options(args: argparse.Namespace) -> str:
    """The command line's options as given (defaults included), for the record."""
    shown = []
    for key, value in vars(args).items():
        if key in ("json", "no_write", "merge") or value == []:
            continue
        if value is True:
            shown.append(f"--{key.replace('_', '-')}")
        elif value not in (False, "", None):
            listed = " ".join(map(str, value)) if isinstance(value, list) else value
            shown.append(f"--{key.replace('_', '-')} {listed}")
    return " ".join(shown)


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def evaluating(r: JobResult) -> str:
    """Time inside evaluations, and its share of the run without the ONNX export."""
    if r.eval_wall_s is None:
        return "not timed"
    return f"{r.eval_wall_s:.0f} s ({r.eval_wall_s / max(r.wall_s - r.onnx_s, 1e-9):.0%})"


def time_to_target_section(results: list[JobResult]) -> list[str]:
    lines = [
        "| algo | seed | ended | stop_reason | env steps | wall | CPU | of which evaluating (wall) | "
        "steps/s (run's fps) | evaluations (timestep: held-out success) | "
        "full budget 2.048M steps, **projected** |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        curve = ", ".join(f"{step:,}: {rate:.0%}" for _, step, rate in r.evaluations)
        ended = r.status + (" (cap)" if r.capped else "")
        lines.append(
            f"| {r.algorithm} | {r.seed} | {ended} | {r.stop_reason} | {r.timesteps:,} | {r.wall_s:.0f} s | "
            f"{r.cpu_s:.0f} s | {evaluating(r)} | {r.projection_steps_per_s:,.0f} | {curve} | "
            f"{minutes(BUDGET / r.projection_steps_per_s)} |"
        )
    lines.append("")
    for algorithm in sorted({r.algorithm for r in results}):
        runs = [r for r in results if r.algorithm == algorithm]
        reached = [r for r in runs if r.stop_reason == "target_reached"]
        projected = [BUDGET / r.projection_steps_per_s for r in runs]
        if reached:
            walls = [r.wall_s for r in reached]
            steps = [r.timesteps for r in reached]
            lines.append(
                f"- **{algorithm}**: target reached by {len(reached)}/{len(runs)} seeds; wall time median "
                f"{statistics.median(walls):.0f} s, worst {max(walls):.0f} s; env steps median "
                f"{statistics.median(steps):,.0f}, worst {max(steps):,}. Full budget, projected from the "
                f"same runs' steps/s: median {minutes(statistics.median(projected))}, worst "
                f"{minutes(max(projected))} (a projection, not a measurement)."
            )
        else:
            best = max((r.best_eval_success_rate or 0.0) for r in runs)
            lines.append(
                f"- **{algorithm}**: target not reached by any seed within the cap; best held-out success "
                f"{best:.0%}. Full budget, projected: median {minutes(statistics.median(projected))}."
            )
    return lines


def overhead_section(results: list[JobResult]) -> list[str]:
    lines = [
        "| order | algo | seed | evaluation | env steps | wall | CPU | ONNX export | training steps/s | "
        "evaluations |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(results, 1):
        lines.append(
            f"| {i} | {r.algorithm} | {r.seed} | {'on' if r.evaluation else 'off'} | {r.timesteps:,} | "
            f"{r.wall_s:.1f} s | {r.cpu_s:.1f} s | {r.onnx_s:.1f} s | {r.training_steps_per_s:,.0f} | "
            f"{len(r.evaluations)} |"
        )
    lines.append("")
    for r in results:
        if r.evaluation and r.eval_wall_s is not None:
            training = r.wall_s - r.onnx_s
            lines.append(
                f"- Within run {results.index(r) + 1} ({r.algorithm}, seed {r.seed}): "
                f"{len(r.evaluations)} evaluations took {r.eval_wall_s:.1f} s of its {training:.1f} s "
                f"(wall, ONNX export excluded; {r.eval_cpu_s:.1f} s of CPU), so its steps/s with ÷ without "
                f"the evaluations = {(training - r.eval_wall_s) / training:.2f}."
            )
    for algorithm in sorted({r.algorithm for r in results}):
        ratios, cpu_ratios = [], []
        for seed in sorted({r.seed for r in results if r.algorithm == algorithm}):
            pair = {r.evaluation: r for r in results if r.algorithm == algorithm and r.seed == seed}
            if True in pair and False in pair:
                ratios.append(pair[True].training_steps_per_s / pair[False].training_steps_per_s)
                with_, without = pair[True], pair[False]
                cpu_ratios.append((without.cpu_s / without.timesteps) / (with_.cpu_s / with_.timesteps))
        if ratios:
            verdict = "met" if statistics.median(ratios) >= 0.9 else "**not met**"
            listed = ", ".join(f"{x:.2f}" for x in ratios)
            cpu_listed = ", ".join(f"{x:.2f}" for x in cpu_ratios)
            lines.append(
                f"- **{algorithm}**: training steps/s (wall) with ÷ without evaluation, per seed: {listed}; "
                f"median {statistics.median(ratios):.2f} (target ≥ 0.9: {verdict}). The same from the "
                f"jobs' CPU time (whole job, ONNX export included, less sensitive to the machine's load): "
                f"{cpu_listed}; median {statistics.median(cpu_ratios):.2f}."
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--algorithms", default="PPO,DQN")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
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
    parser.add_argument("--json", default="", help="also write the raw results here")
    parser.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    args = parser.parse_args()

    if args.merge:
        merge(args.merge, args.no_write)
        return
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
                for seed in args.seeds:
                    target_results.append(
                        job(
                            algorithm=algorithm,
                            seed=seed,
                            total_episodes=TOTAL_EPISODES,
                            target=TARGET,
                            eval_episodes=100,
                            cap_steps=args.cap_steps,
                            cap_s=args.cap_s,
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


def merge(paths: list[str], no_write: bool) -> None:
    """One section from invocations that ran at the same time (each took its share of the machine)."""
    raws = [json.loads(Path(path).read_text()) for path in paths]

    def results(key: str) -> list[JobResult]:
        return [
            JobResult(**{**r, "evaluations": [tuple(e) for e in r["evaluations"]]})
            for raw in raws
            for r in raw[key]
        ]

    args = argparse.Namespace(**{**raws[0]["args"], "merge": paths})
    for raw in raws:
        if raw["target"]:
            args.cap_steps, args.cap_s = raw["args"]["cap_steps"], raw["args"]["cap_s"]
        if raw["overhead"]:
            args.overhead_episodes = raw["args"]["overhead_episodes"]
    section = render(
        args,
        raws[0]["machine"],
        min(datetime.fromisoformat(raw["started"]) for raw in raws),
        max(datetime.fromisoformat(raw["ended"]) for raw in raws),
        tuple(max(values) for values in zip(*(raw["load_start"] for raw in raws), strict=True)),
        tuple(max(values) for values in zip(*(raw["load_end"] for raw in raws), strict=True)),
        results("target"),
        results("overhead"),
        [options(argparse.Namespace(**raw["args"])) for raw in raws],
    )
    print(section)
    if not no_write:
        from bench.results_file import write_section

        write_section(HEADING, section)


def render(
    args: argparse.Namespace,
    info: dict[str, Any],
    started: datetime,
    ended: datetime,
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
    target_results: list[JobResult],
    overhead_results: list[JobResult],
    commands: list[str],
) -> str:
    def load(values: tuple[float, float, float]) -> str:
        return " / ".join(f"{x:.1f}" for x in values)

    lines = [
        HEADING,
        "",
        f"Measured {started:%Y-%m-%d %H:%M}–{ended:%H:%M} UTC with "
        + (" and, at the same time, ".join(f"`python -m bench.bench_time_to_target {c}`" for c in commands))
        + ".",
        f"Machine: {info['cpu']}, nproc {info['cores']}, no GPU; Python {info['python']}, torch "
        f"{info['torch']}, stable-baselines3 {info['stable_baselines3']}. Load average (1/5/15 min) at start "
        f"{load(load_start)}, at end {load(load_end)}; the machine is shared with other engineers' work, so "
        "absolute times inflate with the load; the overhead ratio comes from runs side by side.",
        "",
        "How: the real job (`TrainingJob`, as every executor runs it) in one process, a real SQLite store, "
        "MLflow off, service defaults (1 torch thread, EVAL_EPISODES=100 held-out mazes, adaptive "
        "evaluation interval, default n_envs and hyperparameters), maze 10, random mode. Wall time runs from "
        "the job's start (building the env and model) to its end (best model kept, ONNX exported).",
        "",
    ]
    if target_results:
        lines += [
            f"### Time to target: `target_success_rate` {TARGET}, request {TOTAL_EPISODES} × "
            f"{TIMESTEPS_PER_EPISODE} = {BUDGET:,} steps",
            "",
            f"Caps: a run not ended after {args.cap_steps:,} steps or {args.cap_s:.0f} s is stopped. The "
            "last column is **not measured**: it is a projection, the full budget ÷ the run's measured "
            "steps/s (the `fps` its status reports: steps ÷ time in `learn()`, evaluations included, "
            "model building and ONNX export not), i.e. what the same request without a target would "
            "take at that throughput on the machine as loaded then.",
            "",
            *time_to_target_section(target_results),
            "",
        ]
    if overhead_results:
        lines += [
            f"### Evaluation overhead: {args.overhead_episodes} × {TIMESTEPS_PER_EPISODE} steps, no target, "
            "with and without periodic evaluation, interleaved",
            "",
            "Training steps/s = env steps ÷ (job wall − ONNX export); 'on' includes every held-out "
            "evaluation (adaptive schedule, the first after iteration 1, and the last model's).",
            "",
            *overhead_section(overhead_results),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
