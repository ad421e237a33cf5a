"""`make bench` / `make bench-full`: run every benchmark in turn; each appends its section to RESULTS.md."""

from __future__ import annotations

import argparse
import subprocess
import sys

QUICK = [
    ["bench.bench_learning", "--quick"],
    ["bench.bench_onnx", "--maze-sizes", "5", "10", "--repeats", "100"],
    ["bench.bench_service", "--quick"],
    ["bench.bench_ray", "--quick"],
    ["bench.bench_throughput", "--steps", "2048", "--large-steps", "256", "--profile-steps", "2048"],
    ["bench.bench_value_memo", "--algorithms", "PPO", "--seeds", "0", "--steps", "2048", "--no-write"],
    # One seed each, a short overhead pair; printed only (the section keeps the full run's figures).
    [
        "bench.bench_time_to_target",
        "--seeds",
        "0",
        "--overhead-seeds",
        "0",
        "--overhead-episodes",
        "4",
        "--no-write",
    ],
    # Two tiny trials and one seed per configuration: the whole path, no figures worth keeping.
    [
        "bench.bench_sweep",
        "--trials",
        "2",
        "--episodes",
        "2",
        "--timesteps-per-episode",
        "512",
        "--seeds",
        "1",
        "--final-mazes",
        "20",
        "--no-write",
    ],
]
FULL = [
    ["bench.bench_learning"],
    ["bench.bench_onnx"],
    ["bench.bench_service"],
    ["bench.bench_ray"],
    ["bench.bench_throughput"],
    ["bench.bench_value_memo"],
    ["bench.bench_time_to_target"],
    ["bench.bench_sweep"],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="minutes instead of hours")
    args = parser.parse_args()
    failures = []
    for module, *options in QUICK if args.quick else FULL:
        print(f"\n=== {module} {' '.join(options)}", flush=True)
        if subprocess.call([sys.executable, "-m", module, *options]) != 0:
            failures.append(module)
    if failures:
        sys.exit(f"benchmarks failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()
