"""The ``RLMaze-v0`` gymnasium environment: moves, observation, reward and time limit on a maze grid.

The maze itself (cells, walls, generation from a seed, distances) is ``mazes/grid.py``; pictures of it
are ``mazes/render.py``. Start is the top-left cell, goal the bottom-right cell.

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

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from mazes.grid import (
    DIRECTION_DELTAS,
    DIRECTIONS,
    MAX_MAZE_SIZE,  # noqa: F401  (api/schemas.py reads the size bounds from here)
    MIN_MAZE_SIZE,  # noqa: F401
    Maze,
    cell_distances_to_goal,
    cell_to_square,
    check_maze_size,
    generate_maze,
    open_directions,
    square_to_cell,
)
from mazes.render import render_ansi, render_rgb

# Action a moves the agent one cell in direction DIRECTIONS[a]; ACTION_DELTAS[a] is that step in cells.
ACTIONS: tuple[str, ...] = DIRECTIONS
ACTION_DELTAS: tuple[tuple[int, int], ...] = DIRECTION_DELTAS

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


def register_env() -> None:
    """Register ``RLMaze-v0`` with gymnasium once (safe to call repeatedly)."""
    if ENV_ID not in gymnasium.envs.registry:
        gymnasium.register(id=ENV_ID, entry_point="maze_env:MazeEnv")


register_env()
