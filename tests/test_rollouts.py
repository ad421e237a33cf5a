"""Playing one maze with a policy: the squares walked, success and step counts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import maze_env
from agents.rollouts import Rollout, play_maze
from mazes.grid import generate_maze, shortest_path, shortest_path_moves
from tests.test_learning import oracle_actions

MAZE_SIZE = 5
MAZE_SEED = 3
UP = maze_env.ACTIONS.index("up")


def always(action: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda batch: np.full(len(batch), action)


def assert_walkable(rollout: Rollout) -> None:
    """Every square listed is open, and each follows the one before it: no jumps over a passage."""
    for (row, col), (next_row, next_col) in zip(rollout.path, rollout.path[1:], strict=False):
        assert abs(row - next_row) + abs(col - next_col) == 1, rollout.path
    assert all(rollout.maze.grid[square] == 0 for square in rollout.path)


def test_an_oracle_walks_the_shortest_path_square_by_square() -> None:
    rollout = play_maze(oracle_actions, MAZE_SIZE, MAZE_SEED)

    assert rollout.success
    assert rollout.steps == rollout.shortest_path_steps == shortest_path_moves(rollout.maze)
    assert rollout.path == shortest_path(rollout.maze)
    assert rollout.path[0] == rollout.maze.start and rollout.path[-1] == rollout.maze.goal
    assert_walkable(rollout)


def test_the_maze_is_the_one_its_seed_names() -> None:
    rollout = play_maze(oracle_actions, MAZE_SIZE, MAZE_SEED)

    assert np.array_equal(rollout.maze.grid, generate_maze(MAZE_SIZE, MAZE_SEED).grid)


def test_a_policy_bumping_into_a_wall_fails_at_the_time_limit_without_moving() -> None:
    # The start is in the top row: up is the outer wall.
    limited = play_maze(always(UP), MAZE_SIZE, MAZE_SEED, max_steps=10)
    default = play_maze(always(UP), MAZE_SIZE, MAZE_SEED)

    assert (limited.success, limited.steps, limited.path) == (False, 10, [limited.maze.start])
    assert default.steps == maze_env.default_max_episode_steps(MAZE_SIZE)


def test_a_wandering_policy_lists_each_square_it_crosses() -> None:
    rollout = play_maze(always(maze_env.ACTIONS.index("right")), MAZE_SIZE, MAZE_SEED, max_steps=10)

    assert not rollout.success and rollout.steps == 10
    assert len(rollout.path) > 1
    assert_walkable(rollout)
