"""Hyperparameter sweep (issue 22): a DQN sweep on random mazes through the real service, then the best
parameters it found against the defaults, on the same budget and several training seeds each.

Everything goes through a real `uvicorn main:app` on loopback, as a user would drive it: `POST /sweeps`
(the default DQN search space, the median pruner), `GET /sweeps/{id}` until the sweep completes; then
`POST /training/start` with the best trial's hyperparameters and without any (the defaults), once per
seed, with the sweep's budget and evaluation interval; when a run has ended, `GET /experiments/{id}`
(its periodic held-out evaluations, from MLflow: steps to reach 95%) and `POST /experiments/{id}/evaluate`
(the kept model on `--final-mazes` held-out mazes). The service runs with its defaults (local SQLite and
MLflow stores, EVAL_EPISODES=100, TORCH_THREADS=1) except `MAX_CONCURRENT_RUNS` = `--parallel` and
`EXECUTOR` = `--executor`.

Usage: ``.venv/bin/python -m bench.bench_sweep [--trials 12 --episodes 25 ...] [--no-write]``; the result
replaces the "## Hyperparameter sweep" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from typing import Any

import httpx

from bench.machine import load_average, log, machine_line
from bench.results_file import RESULTS_FILE, write_section
from bench.service_process import Service, settled

HEADING = "## Hyperparameter sweep"
TARGET = 0.95
EVAL_EPISODES = 100  # the service's default: held-out mazes per periodic evaluation
POLL_S = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--trials", type=int, default=12, help="n_trials of the sweep")
    parser.add_argument("--parallel", type=int, default=2, help="parallel_trials and MAX_CONCURRENT_RUNS")
    parser.add_argument("--episodes", type=int, default=25, help="total_episodes of every run")
    parser.add_argument("--timesteps-per-episode", type=int, default=2000, help="steps per iteration")
    parser.add_argument("--maze-size", type=int, default=10)
    parser.add_argument(
        "--eval-every", type=int, default=1, help="eval_every_episodes: the steps-to-95%% resolution"
    )
    parser.add_argument("--pruner-startup-trials", type=int, default=4, help="pruner.n_startup_trials")
    parser.add_argument(
        "--pruner-warmup-evaluations", type=int, default=1, help="pruner.n_warmup_evaluations"
    )
    parser.add_argument(
        "--sweep-seed", type=int, default=0, help="the sweep's seed (every trial trains with it)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds of the comparison runs"
    )
    parser.add_argument("--final-mazes", type=int, default=500, help="held-out mazes of the final evaluation")
    parser.add_argument("--executor", choices=("thread", "process"), default="process")
    parser.add_argument("--timeout-min", type=float, default=120.0, help="give up after this long")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    return parser.parse_args(argv)


def budget(args: argparse.Namespace) -> dict[str, Any]:
    """What every run of the benchmark shares: algorithm, maze, budget."""
    return {
        "algorithm": "DQN",
        "maze_size": args.maze_size,
        "maze_mode": "random",
        "total_episodes": args.episodes,
        "timesteps_per_episode": args.timesteps_per_episode,
        "device": "cpu",
    }


def poll(http: httpx.Client, path: str, done: Any, deadline: float) -> dict[str, Any]:
    while True:
        body: dict[str, Any] = http.get(path).raise_for_status().json()
        if done(body):
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not done in time; last answer: {body}")
        time.sleep(POLL_S)


def run_sweep(http: httpx.Client, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    body = {
        **budget(args),
        "n_trials": args.trials,
        "parallel_trials": args.parallel,
        "seed": args.sweep_seed,
        "eval_every_episodes": args.eval_every,
        "pruner": {
            "n_startup_trials": args.pruner_startup_trials,
            "n_warmup_evaluations": args.pruner_warmup_evaluations,
        },
    }
    sweep_id = http.post("/sweeps", json=body).raise_for_status().json()["sweep_id"]
    log(f"sweep {sweep_id}: {args.trials} trials, {args.parallel} at once")
    seen: set[int] = set()

    def finished(sweep: dict[str, Any]) -> bool:
        for trial in sweep["trials"]:
            if trial["state"] != "running" and trial["number"] not in seen:
                seen.add(trial["number"])
                log(f"trial {trial['number']} {trial['state']}: {trial['success_rate']} {trial['params']}")
        return bool(sweep["status"] == "completed")

    return poll(http, f"/sweeps/{sweep_id}", finished, deadline)


def trial_wall_s(http: httpx.Client, run_id: str | None) -> float | None:
    if run_id is None:
        return None
    return wall_s(http.get(f"/training/status/{run_id}").raise_for_status().json())


def wall_s(status: dict[str, Any]) -> float | None:
    if not status.get("started_at") or not status.get("finished_at"):
        return None
    started = datetime.datetime.fromisoformat(status["started_at"])
    return (datetime.datetime.fromisoformat(status["finished_at"]) - started).total_seconds()


def compare(
    http: httpx.Client, args: argparse.Namespace, sweep: dict[str, Any], deadline: float
) -> list[dict[str, Any]]:
    """Every seed with the best trial's parameters and with the defaults, queued together (interleaved,
    so that the machine's load falls on both alike), then each measured once it has ended."""
    best = sweep["best_trial"]
    configs = [("best found", dict(best["params"]))] if best else []
    configs.append(("defaults", {}))
    eval_every = sweep["request"]["eval_every_episodes"]
    started = []
    for seed in args.seeds:
        for label, params in configs:
            body = {
                **budget(args),
                "seed": seed,
                "eval_every_episodes": eval_every,
                "tags": {"bench": "sweep"},
            }
            body["name"] = f"bench-sweep {label} seed {seed}"
            if params:
                body["hyperparameters"] = params
            run_id = http.post("/training/start", json=body).raise_for_status().json()["experiment_id"]
            started.append((label, seed, run_id))
    results = []
    for label, seed, run_id in started:
        status = poll(http, f"/training/status/{run_id}", settled, deadline)
        history = evaluation_history(http, run_id)
        final = http.post(f"/experiments/{run_id}/evaluate", json={"episodes": args.final_mazes}, timeout=600)
        held_out = final.raise_for_status().json()
        points = [(p["step"], p["value"]) for p in history]
        results.append(
            {
                "config": label,
                "seed": seed,
                "run_id": run_id,
                "status": status["status"],
                "stop_reason": status["stop_reason"],
                "wall_s": wall_s(status),
                "success": held_out["success_rate"],
                "path_efficiency": held_out["path_efficiency"],
                "steps_to_target": next((step for step, value in points if value >= TARGET), None),
                "evaluations": points,
            }
        )
        reached = results[-1]["steps_to_target"]
        log(f"{label} seed {seed}: {held_out['success_rate']:.1%} held-out, {reached} steps to 95%")
    return results


def evaluation_history(http: httpx.Client, run_id: str, wait_s: float = 60.0) -> list[dict[str, Any]]:
    """The run's periodic held-out evaluations as MLflow has them; the last one can reach MLflow a
    moment after the run's final state, so wait (a while) until it is there."""
    until = time.monotonic() + wait_s
    while True:
        detail = http.get(f"/experiments/{run_id}").raise_for_status().json()
        points: list[dict[str, Any]] = detail["history"].get("eval_success_rate", [])
        last = detail["training"]["eval_timesteps"] or 0
        if max((p["step"] for p in points), default=0) >= last or time.monotonic() > until:
            return points
        time.sleep(POLL_S)


def short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"`{key}`={short(value)}" for key, value in params.items())


def sweep_lines(sweep: dict[str, Any], walls: dict[int, float | None]) -> list[str]:
    lines = [
        "| trial | state | held-out success (best eval) | steps to it | wall | parameters |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for t in sweep["trials"]:
        success = "—" if t["success_rate"] is None else f"{t['success_rate']:.0%}"
        if t["state"] == "pruned" and t["evaluations"]:
            success = (
                f"pruned at {max(map(int, t['evaluations'])):,} steps ({max(t['evaluations'].values()):.0%})"
            )
        steps = "—" if t["steps_to_best"] is None else f"{t['steps_to_best']:,}"
        wall = walls.get(t["number"])
        shown = "—" if wall is None else f"{wall:.0f} s"
        lines.append(
            f"| {t['number']} | {t['state']} | {success} | {steps} | {shown} | {params_text(t['params'])} |"
        )
    best = sweep["best_trial"]
    lines.append("")
    if best:
        lines.append(f"Best: trial {best['number']}, {params_text(best['params'])}.")
    if sweep["param_importances"]:
        ranked = sorted(sweep["param_importances"].items(), key=lambda item: -item[1])
        lines.append(
            "Optuna's parameter importances: " + ", ".join(f"`{k}` {v:.2f}" for k, v in ranked) + "."
        )
    return lines


def comparison_lines(results: list[dict[str, Any]], final_mazes: int) -> list[str]:
    lines = [
        f"| parameters | seed | held-out success ({final_mazes:,} mazes) | path efficiency | steps to 95% | "
        "ended | wall | periodic evaluations (step: success) |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in results:
        to_target = "not reached" if r["steps_to_target"] is None else f"{r['steps_to_target']:,}"
        curve = ", ".join(f"{step:,}: {value:.0%}" for step, value in r["evaluations"])
        wall = "—" if r["wall_s"] is None else f"{r['wall_s']:.0f} s"
        lines.append(
            f"| {r['config']} | {r['seed']} | {r['success']:.1%} | {r['path_efficiency']:.3f} | "
            f"{to_target} | {r['status']} ({r['stop_reason']}) | {wall} | {curve} |"
        )
    lines.append("")
    for config in dict.fromkeys(r["config"] for r in results):
        runs = [r for r in results if r["config"] == config]
        successes = [r["success"] for r in runs]
        reached = [r["steps_to_target"] for r in runs if r["steps_to_target"] is not None]
        steps = (
            f"median {statistics.median(reached):,.0f}, worst {max(reached):,}"
            + ("" if len(reached) == len(runs) else f"; not reached by {len(runs) - len(reached)}")
            if reached
            else "not reached by any seed"
        )
        lines.append(
            f"- **{config}**: held-out success median {statistics.median(successes):.1%}, worst seed "
            f"{min(successes):.1%}; steps to 95% (periodic evaluations): {steps}."
        )
    return lines


def report(
    args: argparse.Namespace,
    argv: list[str],
    sweep: dict[str, Any],
    walls: dict[int, float | None],
    results: list[dict[str, Any]],
    started: datetime.datetime,
    loads: list[str],
) -> str:
    steps = args.episodes * args.timesteps_per_episode
    request = sweep["request"]
    counts = {
        state: sum(t["state"] == state for t in sweep["trials"]) for state in ("complete", "pruned", "fail")
    }
    ended = datetime.datetime.now(datetime.UTC)
    command = " ".join([".venv/bin/python -m bench.bench_sweep", *argv])
    pruner = (
        f"`n_startup_trials` {args.pruner_startup_trials}, "
        f"`n_warmup_evaluations` {args.pruner_warmup_evaluations}"
    )
    lines = [
        HEADING,
        "",
        f"Measured {started:%Y-%m-%d %H:%M}–{ended:%H:%M} UTC with `{command}`. {machine_line()} "
        f"Load average (1/5/15 min) at start / after the sweep / at end: {' | '.join(loads)}; the 2 cores "
        "may be shared with other work.",
        "",
        f"How: a real service (`uvicorn main:app`, EXECUTOR={args.executor}, "
        f"MAX_CONCURRENT_RUNS={args.parallel}, local SQLite and MLflow stores, EVAL_EPISODES=100, "
        "TORCH_THREADS=1), driven over HTTP as a user would. DQN, default `planner` policy and n_envs, "
        f"random {args.maze_size}×{args.maze_size} mazes, {args.episodes} × {args.timesteps_per_episode:,} "
        f"= {steps:,} steps per run, a held-out evaluation every {request['eval_every_episodes']} "
        "iterations (and after the first and the last).",
        "",
        f"### The sweep: {args.trials} trials, {args.parallel} at once, default DQN search space, "
        f"median pruner ({pruner})",
        "",
        f"Sweep seed {request['seed']} (every trial trains with it); {counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['fail']} failed; wall time {sweep_wall(sweep)}.",
        "",
        *sweep_lines(sweep, walls),
        "",
        f"### Best found against the defaults: seeds {', '.join(map(str, args.seeds))}, {steps:,} steps each",
        "",
        "Held-out success: `POST /experiments/{id}/evaluate` of the run's kept model (its best "
        f"periodic evaluation) on {args.final_mazes:,} evaluation mazes, never trained on; the first "
        f"{min(EVAL_EPISODES, args.final_mazes)} of them are the periodic evaluations' mazes, on which "
        "the kept model was chosen. Steps to "
        "95%: the first periodic evaluation at ≥ 95% (so up to one evaluation interval late).",
        "",
        *comparison_lines(results, args.final_mazes),
    ]
    return "\n".join(lines) + "\n"


def sweep_wall(sweep: dict[str, Any]) -> str:
    if not sweep.get("finished_at"):
        return "—"
    created = datetime.datetime.fromisoformat(sweep["created_at"])
    return f"{(datetime.datetime.fromisoformat(sweep['finished_at']) - created).total_seconds() / 60:.1f} min"


def main(argv: list[str] | None = None) -> None:
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(given)
    started = datetime.datetime.now(datetime.UTC)
    deadline = time.monotonic() + args.timeout_min * 60
    loads = [load_average()]
    service = Service(
        "sweep",
        {"MAX_CONCURRENT_RUNS": str(args.parallel), "EVAL_EPISODES": str(EVAL_EPISODES)},
        args.executor,
    )
    service.start()
    try:
        with httpx.Client(base_url=service.base_url, timeout=60, trust_env=False) as http:
            sweep = run_sweep(http, args, deadline)
            walls = {t["number"]: trial_wall_s(http, t["run_id"]) for t in sweep["trials"]}
            loads.append(load_average())
            results = compare(http, args, sweep, deadline)
    finally:
        service.stop()
    loads.append(load_average())
    section = report(args, [a for a in given if a != "--no-write"], sweep, walls, results, started, loads)
    print(section)
    if not args.no_write:
        write_section(HEADING, section)
        log(f"wrote its section of {RESULTS_FILE}")


if __name__ == "__main__":
    main()
