"""Play one maze with an exported policy and record every square the agent occupies."""

from __future__ import annotations

import dataclasses

import maze_env
from agents.evaluation import Predict, play
from mazes.grid import Maze, shortest_path_moves


@dataclasses.dataclass(frozen=True)
class Rollout:
    maze: Maze
    path: list[tuple[int, int]]
    success: bool
    steps: int
    shortest_path_steps: int


def play_maze(predict: Predict, maze_size: int, maze_seed: int, max_steps: int | None = None) -> Rollout:
    """Run a deterministic policy on the maze `maze_seed` until it reaches the goal or the time limit.

    :param predict: maps a batch of observations to a batch of actions (e.g. `OnnxPolicy.predict`).
    :param maze_size: cells per side.
    :param maze_seed: which maze.
    :param max_steps: time limit in actions (default: the environment's).
    :returns: the path in squares (a cell move shows as two squares), success and step counts.
    """
    env = maze_env.MazeEnv(maze_size=maze_size, maze_mode="random", max_episode_steps=max_steps)
    episode = play(predict, [env], [maze_seed], record_positions=True)[0]
    return Rollout(
        maze=episode.maze,
        path=_squares_visited(episode.positions),
        success=episode.success,
        steps=episode.steps,
        shortest_path_steps=shortest_path_moves(episode.maze),
    )


def _squares_visited(positions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    path = positions[:1]
    for position in positions[1:]:
        last = path[-1]
        if position == last:
            continue  # bumped into a wall: the agent stays on its square
        row, col = last
        # A cell move crosses the passage square between the two cells: list it too.
        middle = ((row + position[0]) // 2, (col + position[1]) // 2)
        if middle != last and middle != position:
            path.append(middle)
        path.append(position)
    return path
