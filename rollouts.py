"""Play one maze with an exported policy and record every square the agent occupies."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

import maze_env


@dataclasses.dataclass(frozen=True)
class Rollout:
    maze: maze_env.Maze
    path: list[tuple[int, int]]
    success: bool
    steps: int
    shortest_path_steps: int


def play_maze(
    predict: Callable[[np.ndarray], np.ndarray], maze_size: int, maze_seed: int, max_steps: int | None = None
) -> Rollout:
    """Run a deterministic policy on the maze `maze_seed` until it reaches the goal or the time limit.

    :param predict: maps a batch of observations to a batch of actions (e.g. `OnnxPolicy.predict`).
    :param maze_size: cells per side.
    :param maze_seed: which maze.
    :param max_steps: time limit in actions (default: the environment's).
    :returns: the path in squares (a cell move shows as two squares), success and step counts.
    """
    env = maze_env.MazeEnv(maze_size=maze_size, maze_mode="random", max_episode_steps=max_steps)
    observation, _ = env.reset(options={"maze_seed": maze_seed})
    path = [env.agent_pos]
    steps = 0
    success = False
    while True:
        action = int(predict(observation[np.newaxis])[0])
        observation, _, terminated, truncated, info = env.step(action)
        steps += 1
        _extend_path(path, env.agent_pos)
        if terminated or truncated:
            success = bool(info.get("is_success", False))
            break
    return Rollout(
        maze=env.maze,
        path=path,
        success=success,
        steps=steps,
        shortest_path_steps=maze_env.shortest_path_moves(env.maze),
    )


def _extend_path(path: list[tuple[int, int]], position: tuple[int, int]) -> None:
    last = path[-1]
    if position == last:
        return  # bumped into a wall: the agent stays on its square
    row, col = last
    # A cell move crosses the passage square between the two cells: list it too.
    middle = ((row + position[0]) // 2, (col + position[1]) // 2)
    if middle != last and middle != position:
        path.append(middle)
    path.append(position)
