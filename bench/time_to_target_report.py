"""The time-to-target benchmark's report: its Markdown section of bench/RESULTS.md, from this invocation's
jobs or from the JSON files of invocations run side by side."""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.time_to_target_job import BUDGET, TARGET, TIMESTEPS_PER_EPISODE, TOTAL_EPISODES, JobResult

HEADING = "## Time to target"


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
        "| algo | maze | seed | ended | stop_reason | env steps | wall | CPU | of which evaluating (wall) | "
        "steps/s (run's fps) | evaluations (timestep: held-out success) | "
        "full budget 2.048M steps, **projected** |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        curve = ", ".join(f"{step:,}: {rate:.0%}" for _, step, rate in r.evaluations)
        ended = r.status + (" (cap)" if r.capped else "")
        lines.append(
            f"| {r.algorithm} | {r.maze_size} | {r.seed} | {ended} | {r.stop_reason} | {r.timesteps:,} | "
            f"{r.wall_s:.0f} s | "
            f"{r.cpu_s:.0f} s | {evaluating(r)} | {r.projection_steps_per_s:,.0f} | {curve} | "
            f"{minutes(BUDGET / r.projection_steps_per_s)} |"
        )
    lines.append("")
    for algorithm, maze_size in sorted({(r.algorithm, r.maze_size) for r in results}):
        runs = [r for r in results if (r.algorithm, r.maze_size) == (algorithm, maze_size)]
        label = f"{algorithm}, maze {maze_size}"
        reached = [r for r in runs if r.stop_reason == "target_reached"]
        projected = [BUDGET / r.projection_steps_per_s for r in runs]
        if reached:
            walls = [r.wall_s for r in reached]
            steps = [r.timesteps for r in reached]
            lines.append(
                f"- **{label}**: target reached by {len(reached)}/{len(runs)} seeds; wall time median "
                f"{statistics.median(walls):.0f} s, worst {max(walls):.0f} s; env steps median "
                f"{statistics.median(steps):,.0f}, worst {max(steps):,}. Full budget, projected from the "
                f"same runs' steps/s: median {minutes(statistics.median(projected))}, worst "
                f"{minutes(max(projected))} (a projection, not a measurement)."
            )
        else:
            best = max((r.best_eval_success_rate or 0.0) for r in runs)
            lines.append(
                f"- **{label}**: target not reached by any seed within the cap; best held-out success "
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

    maze_sizes = sorted({r.maze_size for r in [*target_results, *overhead_results]})
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
        "evaluation interval, default n_envs and hyperparameters), random mode, maze "
        f"{'/'.join(map(str, maze_sizes))} (the overhead pairs: maze 10). "
        "Wall time runs from "
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
