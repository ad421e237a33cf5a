"""Replay an exported maze policy with onnxruntime only (no torch, no Stable-Baselines3).

Usage: ``python -m agents.replay path/to/model.onnx [--maze-seed N]``

The maze size, mode and seed come from the file's metadata (see ``agents.onnx_policy.METADATA_MAZE_*``);
``--maze-seed`` replays the policy on another maze of the same size. Prints the squares the agent
visited, the number of steps and whether it reached the goal. Exit code: 0 goal reached, 1 not reached
(time limit), 2 bad arguments or metadata.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import maze_env
from agents.evaluation import Episode, play
from agents.onnx_policy import METADATA_MAZE_MODE, METADATA_MAZE_SEED, METADATA_MAZE_SIZE, OnnxPolicy
from mazes.grid import shortest_path_moves


def replay(policy: OnnxPolicy, maze_size: int, maze_mode: str, maze_seed: int) -> Episode:
    """
    Run one deterministic episode of the policy on the given maze.

    :param policy: the exported policy
    :param maze_size: cells per side, as in training
    :param maze_mode: ``"fixed"`` or ``"random"``, as in training
    :param maze_seed: the maze to play
    :return: the maze, the squares visited (start included) and the outcome
    """
    env = maze_env.MazeEnv(maze_size=maze_size, maze_mode=maze_mode, seed=maze_seed)
    return play(policy.predict, [env], [maze_seed], record_positions=True)[0]


def main(argv: list[str] | None = None) -> int:
    """
    :param argv: command-line arguments (default: ``sys.argv[1:]``)
    :return: the process exit code
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an .onnx file written by onnx_export.export_policy")
    parser.add_argument("--maze-seed", type=int, help="maze to play (default: the one in the metadata)")
    args = parser.parse_args(argv)

    policy = OnnxPolicy(args.model)
    metadata = policy.metadata
    missing = [key for key in (METADATA_MAZE_SIZE, METADATA_MAZE_MODE) if key not in metadata]
    if missing:
        parser.error(f"{args.model} has no {', '.join(missing)} metadata")
    maze_seed = args.maze_seed if args.maze_seed is not None else metadata.get(METADATA_MAZE_SEED)
    if maze_seed is None:
        parser.error(f"{args.model} has no {METADATA_MAZE_SEED} metadata: pass --maze-seed")

    result = replay(policy, int(metadata[METADATA_MAZE_SIZE]), metadata[METADATA_MAZE_MODE], int(maze_seed))
    print(f"maze: size {result.maze.size}, seed {result.maze.seed}, goal {result.maze.goal}")
    print(f"path: {result.positions}")
    print(f"steps: {result.steps} (shortest: {shortest_path_moves(result.maze)})")
    print(f"reached goal: {'yes' if result.success else 'no'}")
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
