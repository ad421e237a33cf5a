"""Pictures of a maze and the agent in it: text (``ansi``) and RGB arrays, for ``MazeEnv.render``."""

from __future__ import annotations

import numpy as np

from mazes.grid import Maze

RGB_SCALE: int = 8


def render_ansi(maze: Maze, agent_pos: tuple[int, int]) -> str:
    """Text picture of the maze: ``#`` wall, ``A`` agent, ``G`` goal, space open.

    :param maze: the maze.
    :param agent_pos: agent square.
    """
    rows = [["#" if v else " " for v in row] for row in maze.grid]
    rows[maze.goal[0]][maze.goal[1]] = "G"
    rows[agent_pos[0]][agent_pos[1]] = "A"
    return "\n".join("".join(r) for r in rows) + "\n"


def render_rgb(maze: Maze, agent_pos: tuple[int, int], scale: int = RGB_SCALE) -> np.ndarray:
    """RGB picture of shape ``((2N+1)*scale, (2N+1)*scale, 3)``: walls dark, goal green, agent red.

    :param maze: the maze.
    :param agent_pos: agent square.
    :param scale: pixels per square.
    """
    img = np.where(maze.grid[..., None] == 1, np.uint8(30), np.uint8(235)).astype(np.uint8)
    img = np.repeat(img, 3, axis=2)
    img[maze.goal] = (40, 180, 60)
    img[agent_pos] = (220, 40, 40)
    return np.kron(img, np.ones((scale, scale, 1), dtype=np.uint8))
