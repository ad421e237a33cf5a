"""Training and env throughput of this checkout against a baseline commit, side by side in one invocation.

The baseline (default: 568106c, main before the batched env and the gather planner) is extracted with
``git archive`` into a temp dir, and every measurement runs in a fresh subprocess that imports either that
tree or this one, pinned to the same cores with the same torch threads. Measured:

* training env steps/s, PPO and DQN, the service's defaults (16 envs), random mode, maze 10;
* the raw env alone on one core: ``make_vec_env`` with 1,024 envs (batched here, DummyVecEnv in the
  baseline) against the single-maze ``RLMaze-v0``;
* training steps/s at maze 30 against maze 10 (both trees);
* a cProfile of PPO's ``learn()`` in both trees: the share of time in the planner, backward and env steps.

Results go to the "## Throughput" section of bench/RESULTS.md (``python -m bench.bench_throughput``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE_COMMIT = "568106c"
HEADING = "## Throughput"


def _pin(cores: int) -> list[int]:
    allowed = sorted(os.sched_getaffinity(0))[:cores]
    os.sched_setaffinity(0, allowed)
    return allowed


def _train_steps_per_second(job: dict[str, Any]) -> dict[str, Any]:
    """In the worker: train one model for ``steps`` env steps; optionally profile ``learn()``."""
    import torch

    from agents import building, hyperparameters

    torch.set_num_threads(job["torch_threads"])
    algorithm, maze_size = job["algorithm"], job["maze_size"]
    env = building.make_vec_env(maze_size, "random", 0, hyperparameters.default_n_envs(algorithm))
    model = building.build_model(
        algorithm, env, {}, seed=0, device="cpu", timesteps_per_episode=job["timesteps_per_episode"]
    )
    if job["warmup_steps"]:
        model.learn(total_timesteps=job["warmup_steps"])  # first rollout, DQN's learning_starts, allocations
    done_before, started = model.num_timesteps, time.perf_counter()
    model.learn(total_timesteps=job["steps"], reset_num_timesteps=False)
    seconds = time.perf_counter() - started
    # PPO finishes its rollout, so count the steps SB3 took rather than the ones asked for.
    steps = model.num_timesteps - done_before
    result: dict[str, Any] = {"steps_per_second": steps / seconds, "steps": steps, "seconds": seconds}
    if job.get("profile_steps"):
        result["profile"] = _profile_learn(model, job["profile_steps"])
    return result


def _profile_learn(model: Any, steps: int) -> dict[str, float]:
    """Share of ``learn()`` spent in the planner's forward, in backward, and stepping envs."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(model.learn, total_timesteps=steps, reset_num_timesteps=False)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = max(ct for (_, _, _, ct, _) in stats.values())
    parts = {
        "planner forward (MazePlannerExtractor.forward)": ("planner.py", "forward"),
        "backward (torch.autograd.backward)": ("autograd/__init__.py", "backward"),
        "env step (VecEnv.step_wait)": ("vec", "step_wait"),
    }
    shares = {}
    for label, (file_part, function) in parts.items():
        seconds = max(
            (
                ct
                for (file, _, name), (_, _, _, ct, _) in stats.items()
                if file_part in file and name == function
            ),
            default=0.0,
        )
        shares[label] = seconds / total
    return shares


def _raw_env_steps_per_second(job: dict[str, Any]) -> dict[str, Any]:
    """In the worker: random actions through ``make_vec_env`` (1,024 envs) and through one ``MazeEnv``."""
    import numpy as np

    import maze_env
    from agents import building

    size, n_envs, steps = job["maze_size"], job["n_envs"], job["steps"]
    rng = np.random.default_rng(0)
    vec_env = building.make_vec_env(size, "random", 0, n_envs)
    vec_env.reset()
    actions = rng.integers(0, 4, size=(steps // n_envs, n_envs))
    started = time.perf_counter()
    for action in actions:
        vec_env.step(action)
    batched = actions.size / (time.perf_counter() - started)
    env = maze_env.MazeEnv(maze_size=size, maze_mode="random", seed=0)
    env.reset()
    single_actions = rng.integers(0, 4, size=job["single_steps"]).tolist()
    started = time.perf_counter()
    for action in single_actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    single = len(single_actions) / (time.perf_counter() - started)
    return {"vec_env": type(vec_env).__name__, "batched": batched, "single": single}


def worker(job: dict[str, Any]) -> None:
    """Run one measurement against the tree ``job["root"]`` and print its JSON result."""
    sys.path.insert(0, job["root"])
    cores = _pin(job["cores"])
    measure = _train_steps_per_second if job["kind"] == "train" else _raw_env_steps_per_second
    print(json.dumps({**measure(job), "cores": cores}))


def run_job(root: Path, job: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` in a fresh interpreter that imports the tree at ``root``."""
    job = {**job, "root": str(root)}
    environment = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(job["cores"])}
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"worker failed in {root}: {completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"  {root.name}: {job['kind']} {job.get('algorithm', '')} {job['maze_size']}: {result}", flush=True)
    return result


def extract_baseline(commit: str, into: Path) -> Path:
    """The tree of ``commit`` (``git archive``: no worktree to register or clean up)."""
    archive = subprocess.run(["git", "archive", commit], cwd=REPO_ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def measure(args: argparse.Namespace, baseline: Path) -> dict[str, Any]:
    trees = {"baseline": baseline, "branch": REPO_ROOT}
    train = {"kind": "train", "cores": 2, "torch_threads": args.torch_threads}
    train.update(warmup_steps=2048, timesteps_per_episode=2048)
    results: dict[str, Any] = {"train": {}, "large": {}, "raw": {}, "profile": {}}
    for algorithm in ("PPO", "DQN"):
        for name, tree in trees.items():
            job = {**train, "algorithm": algorithm, "maze_size": 10, "steps": args.steps}
            if algorithm == "PPO":
                job["profile_steps"] = args.profile_steps
            result = run_job(tree, job)
            results["train"][(algorithm, name)] = result["steps_per_second"]
            if "profile" in result:
                results["profile"][name] = result["profile"]
    for name, tree in trees.items():
        # One PPO iteration at 30x30 took minutes on the baseline: a shorter rollout (same envs, same
        # batch size, so the same share of rollout and update work per step) and no warm-up.
        job = {**train, "algorithm": "PPO", "maze_size": 30, "steps": args.large_steps}
        job.update(warmup_steps=0, timesteps_per_episode=args.large_steps)
        results["large"][name] = run_job(tree, job)["steps_per_second"]
    raw = {"kind": "raw", "cores": 1, "maze_size": 10, "n_envs": 1024, "steps": args.raw_steps}
    for name, tree in trees.items():
        results["raw"][name] = run_job(tree, {**raw, "single_steps": 50_000})
    return results


def report(args: argparse.Namespace, results: dict[str, Any], started: str, notes: str) -> str:
    train, large, raw, profile = results["train"], results["large"], results["raw"], results["profile"]
    lines = [
        HEADING,
        "",
        f"`python -m bench.bench_throughput` ({started}, {platform.node()}, {os.cpu_count()} CPUs visible, "
        f"{platform.machine()}). Baseline: commit {args.baseline} (`git archive`), "
        "branch: this checkout; each number from a fresh process pinned to the same cores, "
        f"torch threads {args.torch_threads} (the service's default), CPU only.",
        "",
        "### Training env steps/s, maze 10, random mode, 2 cores, service defaults "
        f"({args.steps:,} steps each)",
        "",
        "| algorithm | baseline | branch | ratio (target ≥ 5×) |",
        "|---|---:|---:|---:|",
    ]
    for algorithm in ("PPO", "DQN"):
        before, after = train[(algorithm, "baseline")], train[(algorithm, "branch")]
        lines.append(f"| {algorithm} | {before:,.0f} | {after:,.0f} | {after / before:.2f}× |")
    lines += [
        "",
        f"### Maze 30 against maze 10, PPO, 2 cores ({args.large_steps:,} steps at 30 in one iteration)",
        "",
        "| tree | steps/s at 10 | steps/s at 30 | 10 / 30 (target ≤ 4) |",
        "|---|---:|---:|---:|",
    ]
    for name in ("baseline", "branch"):
        small = train[("PPO", name)]
        lines.append(f"| {name} | {small:,.0f} | {large[name]:,.0f} | {small / large[name]:.1f} |")
    lines += [
        "",
        f"### The env alone, maze 10, one core, random actions ({args.raw_steps:,} steps over 1,024 envs)",
        "",
        "| tree | `make_vec_env` with 1,024 envs | steps/s | single `RLMaze-v0` steps/s |",
        "|---|---|---:|---:|",
    ]
    for name in ("baseline", "branch"):
        r = raw[name]
        lines.append(f"| {name} | {r['vec_env']} | {r['batched']:,.0f} | {r['single']:,.0f} |")
    lines += [
        "",
        f"### Where PPO's `learn()` spends its time (cProfile, {args.profile_steps:,} steps, maze 10)",
        "",
        "| share of `learn()` | baseline | branch |",
        "|---|---:|---:|",
    ]
    for label in profile.get("baseline", {}):
        lines.append(f"| {label} | {profile['baseline'][label]:.0%} | {profile['branch'][label]:.0%} |")
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", default=BASELINE_COMMIT, help="commit to compare against")
    parser.add_argument("--steps", type=int, default=8_192, help="timed training steps at maze 10")
    parser.add_argument("--large-steps", type=int, default=512, help="timed training steps at maze 30")
    parser.add_argument("--profile-steps", type=int, default=4_096, help="profiled PPO steps")
    parser.add_argument("--raw-steps", type=int, default=1_024 * 300, help="raw batched env steps")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--notes", default="", help="markdown appended to the section")
    parser.add_argument("--no-write", action="store_true", help="print instead of writing RESULTS.md")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    started = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average at start {load}"
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as directory:
        results = measure(args, extract_baseline(args.baseline, Path(directory)))
    section = report(args, results, started, args.notes)
    print(section)
    if not args.no_write:
        from bench.results_file import write_section

        write_section(HEADING, section)


if __name__ == "__main__":
    main()
