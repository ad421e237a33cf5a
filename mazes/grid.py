"""The maze grid: perfect mazes of N x N cells as square grids, their generation and distances.

Geometry
    A maze of ``N x N`` cells is stored as a square grid of ``(2N+1) x (2N+1)`` squares (1 = wall, 0 = open).
    Cell ``(i, j)`` is square ``(2i+1, 2j+1)``; the square between two neighbouring cells is open when a
    passage joins them. Mazes are *perfect* (a spanning tree of the cell graph: connected, no loops), built
    with randomised Kruskal from ``random.Random(seed)``, so a seed gives the same maze on every machine.
    The start is the top-left cell, the goal the bottom-right cell.

The grid knows nothing of agents, rewards or episodes: ``maze_env.py`` plays it (as Minigrid keeps its
``Grid`` apart from its environments); ``mazes/render.py`` draws it.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import numpy as np

MIN_MAZE_SIZE: int = 2
MAX_MAZE_SIZE: int = 30

DIRECTIONS: tuple[str, ...] = ("up", "right", "down", "left")
# Row/column step of each direction, in cells (a cell step is two squares).
DIRECTION_DELTAS: tuple[tuple[int, int], ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))


@dataclass(frozen=True)
class Maze:
    """A perfect maze.

    :param size: cells per side ``N``.
    :param grid: uint8 array of shape ``(2N+1, 2N+1)``, 1 = wall, 0 = open.
    :param start: start square (row, col).
    :param goal: goal square (row, col).
    :param seed: the seed that generated it.
    """

    size: int
    grid: np.ndarray
    start: tuple[int, int]
    goal: tuple[int, int]
    seed: int


def check_maze_size(size: int) -> None:
    """Raise ``ValueError`` unless ``size`` is an allowed maze size.

    :param size: cells per side.
    """
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_MAZE_SIZE <= size <= MAX_MAZE_SIZE:
        raise ValueError(f"maze size must be an integer in [{MIN_MAZE_SIZE}, {MAX_MAZE_SIZE}], got {size!r}")


def cell_to_square(cell: tuple[int, int]) -> tuple[int, int]:
    """Square coordinates of a cell.

    :param cell: (row, col) in cells.
    """
    return (2 * cell[0] + 1, 2 * cell[1] + 1)


def square_to_cell(square: tuple[int, int]) -> tuple[int, int]:
    """Cell coordinates of a cell square.

    :param square: (row, col) in squares; must be a cell square (odd row and column).
    """
    return ((square[0] - 1) // 2, (square[1] - 1) // 2)


def _find_root(parent: list[int], node: int) -> int:
    while parent[node] != node:
        parent[node] = parent[parent[node]]  # path halving keeps the union-find near O(1)
        node = parent[node]
    return node


def generate_maze(size: int, seed: int) -> Maze:
    """Generate a perfect maze with randomised Kruskal, deterministic for ``seed`` on every machine.

    Start is the top-left cell, goal the bottom-right cell.

    :param size: cells per side, in ``[MIN_MAZE_SIZE, MAX_MAZE_SIZE]``.
    :param seed: any integer; the same seed always gives the same maze.
    """
    check_maze_size(size)
    rng = random.Random(int(seed))
    side = 2 * size + 1
    grid = np.ones((side, side), dtype=np.uint8)
    grid[1::2, 1::2] = 0
    # Edges between horizontally (0) and vertically (1) adjacent cells, in a fixed order before shuffling.
    edges = [(i, j, 0) for i in range(size) for j in range(size - 1)]
    edges += [(i, j, 1) for i in range(size - 1) for j in range(size)]
    rng.shuffle(edges)
    parent = list(range(size * size))
    joined = 0
    for i, j, vertical in edges:
        a = i * size + j
        b = a + size if vertical else a + 1
        root_a, root_b = _find_root(parent, a), _find_root(parent, b)
        if root_a == root_b:
            continue  # joining them would close a loop
        parent[root_a] = root_b
        grid[2 * i + 1 + vertical, 2 * j + 1 + (1 - vertical)] = 0
        joined += 1
        if joined == size * size - 1:
            break
    return Maze(
        size=size,
        grid=grid,
        start=cell_to_square((0, 0)),
        goal=cell_to_square((size - 1, size - 1)),
        seed=int(seed),
    )


def bfs_distances(grid: np.ndarray, source: tuple[int, int]) -> np.ndarray:
    """BFS distances in squares from ``source`` to every open square (-1 where unreachable or wall).

    :param grid: maze grid, 1 = wall.
    :param source: square (row, col).
    """
    dist = np.full(grid.shape, -1, dtype=np.int32)
    dist[source] = 0
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        for dr, dc in DIRECTION_DELTAS:
            nr, nc = r + dr, c + dc
            if grid[nr, nc] == 0 and dist[nr, nc] < 0:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


def shortest_path(maze: Maze) -> list[tuple[int, int]]:
    """Shortest path over squares from start to goal, both included (BFS).

    :param maze: the maze.
    """
    dist = bfs_distances(maze.grid, maze.goal)
    if dist[maze.start] < 0:
        raise ValueError(f"goal unreachable in maze seed {maze.seed}")
    path = [maze.start]
    r, c = maze.start
    # Walking downhill on the goal's distance field gives a shortest path without storing parents.
    while (r, c) != maze.goal:
        for dr, dc in DIRECTION_DELTAS:
            nr, nc = r + dr, c + dc
            if dist[nr, nc] == dist[r, c] - 1 and maze.grid[nr, nc] == 0:
                r, c = nr, nc
                break
        path.append((r, c))
    return path


def shortest_path_moves(maze: Maze) -> int:
    """Number of environment actions (cell moves) on a shortest path from start to goal.

    :param maze: the maze.
    """
    return (len(shortest_path(maze)) - 1) // 2


def cell_distances_to_goal(maze: Maze) -> np.ndarray:
    """BFS distance in cells from every cell to the goal, shape ``(N, N)`` int32 (-1 where unreachable).

    Equal to ``bfs_distances(maze.grid, maze.goal)[1::2, 1::2] // 2``, computed over the cell graph with
    plain lists: every reset of a random-mode env needs it, and numpy scalar indexing made it the
    slowest part of a batched env's step.

    :param maze: the maze.
    """
    size = maze.size
    passages = open_directions(maze).reshape(4, -1).tolist()
    offsets = [dr * size + dc for dr, dc in DIRECTION_DELTAS]  # outer walls are closed: no wrap-around
    goal = square_to_cell(maze.goal)
    dist = [-1] * (size * size)
    dist[goal[0] * size + goal[1]] = 0
    frontier = [goal[0] * size + goal[1]]
    while frontier:
        reached = []
        for cell in frontier:
            for direction, offset in enumerate(offsets):
                if passages[direction][cell] and dist[cell + offset] < 0:
                    dist[cell + offset] = dist[cell] + 1
                    reached.append(cell + offset)
        frontier = reached
    return np.array(dist, dtype=np.int32).reshape(size, size)


def open_directions(maze: Maze) -> np.ndarray:
    """Per-cell passage bits, shape ``(4, N, N)`` uint8, channel order as ``DIRECTIONS``.

    :param maze: the maze.
    """
    g = maze.grid
    cells = slice(1, 2 * maze.size, 2)
    bits = np.empty((4, maze.size, maze.size), dtype=np.uint8)
    bits[0] = 1 - g[0 : 2 * maze.size - 1 : 2, cells]
    bits[1] = 1 - g[cells, 2 : 2 * maze.size + 1 : 2]
    bits[2] = 1 - g[2 : 2 * maze.size + 1 : 2, cells]
    bits[3] = 1 - g[cells, 0 : 2 * maze.size - 1 : 2]
    return bits
