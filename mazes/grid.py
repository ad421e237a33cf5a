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

import functools
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


@functools.cache
def edge_layout(size: int) -> tuple[tuple[int, ...], tuple[int, ...], np.ndarray, np.ndarray]:
    """Kruskal's edge list for ``size``, in its order before shuffling: cells ``a`` and ``b`` it joins, and
    the square between them (row, col). Horizontal edges (``b = a + 1``) first, then vertical ones."""
    edges = [(i, j, 0) for i in range(size) for j in range(size - 1)]
    edges += [(i, j, 1) for i in range(size - 1) for j in range(size)]
    a = tuple(i * size + j for i, j, _ in edges)
    b = tuple(i * size + j + (size if vertical else 1) for i, j, vertical in edges)
    rows = np.array([2 * i + 1 + vertical for i, _, vertical in edges], dtype=np.intp)
    cols = np.array([2 * j + 2 - vertical for _, j, vertical in edges], dtype=np.intp)
    rows.flags.writeable = cols.flags.writeable = False  # cached: shared by every caller
    return a, b, rows, cols


@functools.cache
def shuffle_draws(n_items: int) -> tuple[tuple[int, int], ...]:
    """``(i + 1, 32 - (i + 1).bit_length())`` for ``i = n_items - 1 .. 1``: what ``random.shuffle`` draws."""
    return tuple((i + 1, 32 - (i + 1).bit_length()) for i in range(n_items - 1, 0, -1))


def shuffle_word_count(n_items: int) -> int:
    """Words to pre-draw for shuffling ``n_items``: about 1.4 per draw are used, so they almost never run out.

    :param n_items: length of the shuffled list.
    """
    return 2 * n_items + 64


def generator_words(seed: int, n_words: int) -> bytes:
    """The first ``n_words`` 32-bit outputs of ``random.Random(seed)``, little-endian, in one call.

    :param seed: the generator's seed.
    :param n_words: how many words.
    """
    return random.Random(seed).getrandbits(32 * n_words).to_bytes(4 * n_words, "little")


def _shuffled_indices(n_items: int, seed: int) -> list[int]:
    """``random.Random(seed).shuffle(list(range(n_items)))``, with the generator's words drawn in one call.

    CPython's ``shuffle`` swaps item ``i`` (from the last down to 1) with item ``randbelow(i + 1)``, and
    ``randbelow(n)`` takes 32-bit words ``w`` from the Mersenne Twister until ``w >> (32 - k) < n`` (``k``
    the bit length of ``n``). ``getrandbits(32 * m)`` returns the next ``m`` words, the first one lowest.
    Replaying that over pre-drawn words gives the same permutation for a fraction of the Python calls;
    ``tests/test_maze_generation.py`` compares it with ``random.shuffle`` itself for many seeds.
    """
    n_words = shuffle_word_count(n_items)
    while True:
        words = np.frombuffer(generator_words(seed, n_words), dtype="<u4").tolist()
        items = list(range(n_items))
        position = 0
        try:
            for n, shift in shuffle_draws(n_items):
                r = words[position] >> shift
                position += 1
                while r >= n:
                    r = words[position] >> shift
                    position += 1
                i = n - 1
                items[i], items[r] = items[r], items[i]
        except IndexError:
            n_words *= 4
            continue
        return items


def spanning_tree_edges(size: int, seed: int) -> list[int]:
    """Indices (into ``edge_layout(size)``) of the passages of maze ``seed``: randomised Kruskal.

    Edges are taken in shuffled order and opened when they join two different components (union-find
    with path halving), which builds the unique spanning tree of the shuffled order.

    :param size: cells per side.
    :param seed: the maze seed.
    """
    a_of, b_of, _, _ = edge_layout(size)
    parent = list(range(size * size))
    opened: list[int] = []
    last = size * size - 1
    for edge in _shuffled_indices(len(a_of), int(seed)):
        a, b = a_of[edge], b_of[edge]
        while parent[a] != a:
            parent[a] = a = parent[parent[a]]
        while parent[b] != b:
            parent[b] = b = parent[parent[b]]
        if a != b:  # joining two components; otherwise the passage would close a loop
            parent[a] = b
            opened.append(edge)
            if len(opened) == last:
                break
    return opened


def generate_maze(size: int, seed: int) -> Maze:
    """Generate a perfect maze with randomised Kruskal, deterministic for ``seed`` on every machine.

    Start is the top-left cell, goal the bottom-right cell.

    :param size: cells per side, in ``[MIN_MAZE_SIZE, MAX_MAZE_SIZE]``.
    :param seed: any integer; the same seed always gives the same maze.
    """
    check_maze_size(size)
    side = 2 * size + 1
    grid = np.ones((side, side), dtype=np.uint8)
    grid[1::2, 1::2] = 0
    _, _, rows, cols = edge_layout(size)
    opened = spanning_tree_edges(size, seed)
    grid[rows[opened], cols[opened]] = 0
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
