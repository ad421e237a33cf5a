"""Maze generation and the ``RLMaze-v0`` gymnasium environment.

Geometry
    A maze of ``N x N`` cells is stored as a square grid of ``(2N+1) x (2N+1)`` squares (1 = wall, 0 = open).
    Cell ``(i, j)`` is square ``(2i+1, 2j+1)``; the square between two neighbouring cells is open when a
    passage joins them. Mazes are *perfect* (a spanning tree of the cell graph: connected, no loops), built
    with randomised Kruskal from ``random.Random(seed)``, so a seed gives the same maze on every machine.
    The start is the top-left cell, the goal the bottom-right cell.

Moves
    One action moves the agent one *cell* (two squares, through the open passage square). Moving into a wall
    leaves the agent where it is. Working at cell resolution halves the episode length compared with
    square-by-square moves; ``agent_pos`` is still reported in square coordinates.

Observation
    See ``OBSERVATION_ENCODING``: only what a player sees (walls, agent, goal); no distances or directions.

Reward
    ``+1`` on reaching the goal, ``-0.01`` per step, ``-0.1`` more for a move into a wall, and (when
    ``reward_shaping`` is on, the default) potential-based shaping ``F = phi(s') - phi(s)`` with
    ``phi(s) = -0.1 * d(s)``, where ``d`` is the BFS distance in cells from ``s`` to the goal. Shaping of
    this form does not change which policies are optimal (Ng et al. 1999; exactly with discount 1,
    approximately with the agents' 0.99), it only makes the reward dense. The distances are used for the
    reward only, never for the observation. The wall penalty does not change which policies are optimal
    either (a bump is never on a shortest path); it exists because a bump leaves the state unchanged, so
    without it a bump's Q-value sits only a few hundredths below the best move's and DQN's greedy policy
    got stuck bumping (measured).

Time limit
    An episode is truncated after ``max_episode_steps`` steps, by default ``2 * N * N``: at least twice
    the longest possible shortest path (``N*N - 1`` cells), so every maze is solvable within it and a stuck
    deterministic policy ends as a failure.

Maze seeds
    Training mazes (``maze_mode="random"``) take seeds in ``[0, 2**30)``; evaluation mazes
    (``eval_maze_seeds``) take seeds in ``[2**30, 2**31)``. The two sets are disjoint by construction.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

MIN_MAZE_SIZE: int = 2
MAX_MAZE_SIZE: int = 30

ACTIONS: tuple[str, ...] = ("up", "right", "down", "left")
# Row/column step of each action, in cells (a cell move is two squares).
ACTION_DELTAS: tuple[tuple[int, int], ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))

OBSERVATION_ENCODING: str = (
    "A uint8 array of shape (6, N, N) (channels first; N = maze_size in cells; values 0 or 1). Channel "
    "c < 4 at [c, i, j] is 1 when cell (i, j) has an open passage in direction ACTIONS[c] (0 up = row "
    "i-1, 1 right = column j+1, 2 down = row i+1, 3 left = column j-1), 0 when a wall blocks it. Channel 4 "
    "is 1 at the agent's cell only, channel 5 is 1 at the goal's cell only. Cell (i, j) is square "
    "(2i+1, 2j+1) of Maze.grid. Policies read these 0/1 values as they are (no /255 image scaling: the "
    "observation space's bounds are [0, 1], so Stable-Baselines3 only casts them to float32)."
)
N_OBS_CHANNELS: int = 6
AGENT_CHANNEL: int = 4
GOAL_CHANNEL: int = 5

TRAIN_SEED_LIMIT: int = 2**30
EVAL_SEED_OFFSET: int = 2**30
EVAL_SEED_LIMIT: int = 2**31

GOAL_REWARD: float = 1.0
STEP_PENALTY: float = 0.01
WALL_PENALTY: float = 0.1
SHAPING_SCALE: float = 0.1

ENV_ID: str = "RLMaze-v0"


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
        for dr, dc in ACTION_DELTAS:
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
        for dr, dc in ACTION_DELTAS:
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
    offsets = [dr * size + dc for dr, dc in ACTION_DELTAS]  # outer walls are closed: no wrap-around
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
    """Per-cell passage bits, shape ``(4, N, N)`` uint8, channel order as ``ACTIONS``.

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


def encode_observation(
    walls: np.ndarray, agent_cell: tuple[int, int], goal_cell: tuple[int, int]
) -> np.ndarray:
    """Build the observation described by ``OBSERVATION_ENCODING``.

    :param walls: passage bits from ``open_directions``.
    :param agent_cell: agent (row, col) in cells.
    :param goal_cell: goal (row, col) in cells.
    """
    size = walls.shape[1]
    obs = np.zeros((N_OBS_CHANNELS, size, size), dtype=np.uint8)
    obs[:4] = walls
    obs[AGENT_CHANNEL][agent_cell] = 1
    obs[GOAL_CHANNEL][goal_cell] = 1
    return obs


def default_max_episode_steps(maze_size: int) -> int:
    """Default time limit in actions: ``2 * N * N``, twice the longest possible shortest path.

    :param maze_size: cells per side.
    """
    return 2 * maze_size * maze_size


def eval_maze_seeds(n: int) -> list[int]:
    """The first ``n`` evaluation maze seeds, ``2**30, 2**30 + 1, ...``, disjoint from training seeds.

    :param n: how many seeds (at most ``2**30``).
    """
    if not 0 <= n <= EVAL_SEED_LIMIT - EVAL_SEED_OFFSET:
        raise ValueError(f"n must be in [0, {EVAL_SEED_LIMIT - EVAL_SEED_OFFSET}], got {n}")
    return [EVAL_SEED_OFFSET + i for i in range(n)]


def is_eval_seed(maze_seed: int) -> bool:
    """Whether a maze seed belongs to the evaluation range ``[2**30, 2**31)``.

    :param maze_seed: a maze seed.
    """
    return EVAL_SEED_OFFSET <= maze_seed < EVAL_SEED_LIMIT


class MazeEnv(gymnasium.Env[np.ndarray, np.int64]):
    """Maze navigation at cell resolution; see the module docstring for geometry, reward and time limit."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 10}

    def __init__(
        self,
        maze_size: int = 10,
        maze_mode: str = "random",
        seed: int | None = None,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        reward_shaping: bool = True,
    ) -> None:
        """Create the environment.

        :param maze_size: cells per side.
        :param maze_mode: ``"fixed"`` (one maze, chosen by ``seed``, for the env's life) or ``"random"``
            (a new training maze every reset, its seed drawn from a stream derived from ``seed``).
        :param seed: fixed mode: the maze seed (taken modulo ``2**30``, default 0); random mode: the seed of
            the maze-seed stream (``None``: fresh OS entropy).
        :param max_episode_steps: time limit in actions (default ``2 * N * N``).
        :param render_mode: ``None``, ``"ansi"`` or ``"rgb_array"``.
        :param reward_shaping: add potential-based BFS-distance shaping to the reward.
        """
        super().__init__()
        check_maze_size(maze_size)
        if maze_mode not in ("fixed", "random"):
            raise ValueError(f"maze_mode must be 'fixed' or 'random', got {maze_mode!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        self.maze_size = maze_size
        self.maze_mode = maze_mode
        self.render_mode = render_mode
        self.reward_shaping = reward_shaping
        self.max_episode_steps = max_episode_steps or default_max_episode_steps(maze_size)
        self.observation_space = spaces.Box(
            0, 1, shape=(N_OBS_CHANNELS, maze_size, maze_size), dtype=np.uint8
        )
        self.action_space = spaces.Discrete(len(ACTIONS))
        self._seed_stream = np.random.Generator(np.random.PCG64(seed))
        self._fixed_maze = generate_maze(maze_size, 0 if seed is None else int(seed) % TRAIN_SEED_LIMIT)
        self.maze: Maze = self._fixed_maze
        self._load_maze(self._fixed_maze)
        self.agent_pos: tuple[int, int] = self.maze.start
        self._steps = 0

    def _load_maze(self, maze: Maze) -> None:
        self.maze = maze
        self._walls = open_directions(maze)
        self._goal_cell = square_to_cell(maze.goal)
        self._dist = cell_distances_to_goal(maze) if self.reward_shaping else None

    def _next_maze_seed(self) -> int:
        return int(self._seed_stream.integers(0, TRAIN_SEED_LIMIT))

    def _observation(self) -> np.ndarray:
        return encode_observation(self._walls, square_to_cell(self.agent_pos), self._goal_cell)

    def _info(self) -> dict[str, Any]:
        return {"maze_seed": self.maze.seed, "agent_pos": self.agent_pos, "steps": self._steps}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode.

        :param seed: random mode: reseeds the maze-seed stream; fixed mode: no effect on the maze.
        :param options: ``{"maze_seed": int}`` forces that maze for this episode (both modes).
        """
        super().reset(seed=seed)
        forced = (options or {}).get("maze_seed")
        if forced is not None:
            if int(forced) != self.maze.seed:
                self._load_maze(generate_maze(self.maze_size, int(forced)))
        elif self.maze_mode == "random":
            if seed is not None:
                self._seed_stream = np.random.Generator(np.random.PCG64(seed))
            self._load_maze(generate_maze(self.maze_size, self._next_maze_seed()))
        elif self.maze is not self._fixed_maze:
            self._load_maze(self._fixed_maze)  # back from a forced evaluation maze
        self.agent_pos = self.maze.start
        self._steps = 0
        return self._observation(), self._info()

    def _potential(self, cell: tuple[int, int]) -> float:
        assert self._dist is not None
        return -SHAPING_SCALE * float(self._dist[cell])

    def step(self, action: np.int64 | int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move one cell if the passage is open.

        :param action: index into ``ACTIONS``.
        """
        a = int(action)
        cell = square_to_cell(self.agent_pos)
        new_cell = cell
        if self._walls[a][cell]:
            new_cell = (cell[0] + ACTION_DELTAS[a][0], cell[1] + ACTION_DELTAS[a][1])
        self.agent_pos = cell_to_square(new_cell)
        self._steps += 1
        terminated = new_cell == self._goal_cell
        truncated = not terminated and self._steps >= self.max_episode_steps
        reward = (
            -STEP_PENALTY + (GOAL_REWARD if terminated else 0.0) - (WALL_PENALTY if new_cell == cell else 0.0)
        )
        if self.reward_shaping:
            reward += self._potential(new_cell) - self._potential(cell)
        info = self._info()
        if terminated or truncated:
            info["is_success"] = bool(terminated)
        return self._observation(), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> str | np.ndarray | None:
        """Render as text (``"ansi"``: ``#`` wall, ``A`` agent, ``G`` goal) or RGB (``"rgb_array"``)."""
        if self.render_mode == "ansi":
            return render_ansi(self.maze, self.agent_pos)
        if self.render_mode == "rgb_array":
            return render_rgb(self.maze, self.agent_pos)
        return None


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


def register_env() -> None:
    """Register ``RLMaze-v0`` with gymnasium once (safe to call repeatedly)."""
    if ENV_ID not in gymnasium.envs.registry:
        gymnasium.register(id=ENV_ID, entry_point="maze_env:MazeEnv")


register_env()
