"""The markdown report of ``bench_planner_stability``: a stability verdict per (variant, seed), the points."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TARGET = 0.95
COLLAPSE = 0.90


def variant_label(variant: str, sets: dict[str, Any]) -> str:
    """``"service"`` or e.g. ``"service learning_rate=0.0002"``: the variant and its overrides."""
    return " ".join([variant, *(f"{key}={value}" for key, value in sorted(sets.items()))])


def verdict(points: list[dict[str, Any]]) -> tuple[int | None, float | None, bool | None]:
    """(first step at >= 95%, lowest success at any later point, stable) for one run's points.

    Stable: never below 90% after first reaching 95% (None where 95% was never reached).
    """
    ordered = sorted(points, key=lambda p: p["timesteps"])
    first = next((i for i, p in enumerate(ordered) if p["success_rate"] >= TARGET), None)
    if first is None:
        return None, None, None
    after = [p["success_rate"] for p in ordered[first + 1 :]]
    lowest = min(after) if after else None
    return ordered[first]["timesteps"], lowest, lowest is None or lowest >= COLLAPSE


def _kilo(steps: int) -> str:
    if steps >= 1_000_000:
        return f"{steps / 1_000_000:.3g}M"
    return f"{steps / 1000:.3g}k"


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(heading: str, paths: list[Path], notes: str = "", details: bool = True) -> str:
    """A markdown section from JSON-lines files written by ``run``, with ``notes`` (findings) on top: a
    verdict and the success curve per (algorithm, variant, seed), then (``details``) every point's
    statistics."""
    points = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for point in points:
        key = (point.get("algorithm", "PPO"), point["variant"], point["seed"])
        runs.setdefault(key, []).append(point)
    lines = [
        heading,
        "",
        "`python bench/bench_planner_stability.py` (random 10x10 mazes, the service's build path and "
        "defaults but for the variant and `--set` overrides, 16 envs, one `learn()` over the budget; "
        "held-out success of the deterministic policy on the first 200 evaluation mazes; 1 torch thread). "
        f"Stable: never below {COLLAPSE:.0%} after first reaching {TARGET:.0%}.",
        "",
        *([notes.strip(), ""] if notes.strip() else []),
        "| algorithm | variant | seed | first >= 95% (steps) | lowest after | stable | last step "
        "| train wall (s) | held-out success at each evaluation (steps: success) |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for (algorithm, variant, seed), run_points in sorted(runs.items()):
        ordered = sorted(run_points, key=lambda p: p["timesteps"])
        first, lowest, stable = verdict(ordered)
        curve = ", ".join(f"{_kilo(p['timesteps'])}: {p['success_rate']:.1%}" for p in ordered)
        lines.append(
            f"| {algorithm} | {variant} | {seed} | {'-' if first is None else f'{first:,}'} "
            f"| {_cell(lowest, '.1%')} | {'-' if stable is None else ('yes' if stable else '**no**')} "
            f"| {ordered[-1]['timesteps']:,} | {ordered[-1]['train_wall_s']:.0f} | {curve} |"
        )
    if not details:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "| algorithm | variant | seed | steps | success | path eff. | agree | goal weight | step cost "
        "| entropy loss | approx KL | loss | train wall (s) | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (algorithm, variant, seed), run_points in sorted(runs.items()):
        for p in sorted(run_points, key=lambda q: q["timesteps"]):
            lines.append(
                f"| {algorithm} | {variant} | {seed} | {p['timesteps']:,} | {p['success_rate']:.1%} | "
                f"{p['path_efficiency']:.3f} | {p['planner_agreement']:.1%} | {p['goal_weight']:.2f} | "
                f"{p['step_cost']:.3f} | {_cell(p.get('entropy_loss'), '.3f')} | "
                f"{_cell(p.get('approx_kl'), '.4f')} | {_cell(p.get('loss'), '.4f')} | "
                f"{p['train_wall_s']:.0f} | {p['load_1m']:.1f} |"
            )
    return "\n".join(lines) + "\n"
