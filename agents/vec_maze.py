"""``VecMazeEnv``: ``n_envs`` copies of ``RLMaze-v0`` stepped together with array operations.

Behaves exactly like ``DummyVecEnv([MazeEnv(...) for each sub-env])`` as ``agents.building`` built it
before (same seeds, mazes, observations, rewards, dones and infos; ``tests/test_vec_maze.py`` replays both),
but one ``step`` is a handful of numpy operations over all envs instead of a Python call per env: at
hundreds of envs the per-env Python overhead, not the maze logic, was the cost. ``maze_env.MazeEnv`` stays
the single-maze reference (gymnasium's checker, rollouts, replay). Maze generation (Kruskal) and the
goal distances stay per maze in Python, run once per reset; fixed mode computes its one maze once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

import maze_env
from maze_env import (
    ACTION_DELTAS,
    ACTIONS,
    AGENT_CHANNEL,
    GOAL_CHANNEL,
    GOAL_REWARD,
    N_OBS_CHANNELS,
    SHAPING_SCALE,
    STEP_PENALTY,
    TRAIN_SEED_LIMIT,
    WALL_PENALTY,
)
from mazes.grid import Maze, cell_distances_to_goal, check_maze_size, generate_maze, open_directions

_ROW_STEP = np.array([dr for dr, _ in ACTION_DELTAS], dtype=np.int64)
_COL_STEP = np.array([dc for _, dc in ACTION_DELTAS], dtype=np.int64)


class _LoadedMaze:
    """What stepping needs of one maze, computed once per maze: passage bits and shaping potentials."""

    def __init__(self, maze: Maze) -> None:
        self.maze = maze
        self.walls = open_directions(maze)
        # -SHAPING_SCALE * float(d): the same float64 values MazeEnv._potential computes per step.
        self.potential = -SHAPING_SCALE * cell_distances_to_goal(maze).astype(np.float64)


class VecMazeEnv(VecEnv):
    """``n_envs`` maze envs in one: SB3's ``VecEnv`` interface, auto-reset, ``terminal_observation``."""

    def __init__(
        self,
        maze_size: int,
        maze_mode: str,
        seed: int,
        n_envs: int,
        max_episode_steps: int | None = None,
        reward_shaping: bool = True,
    ) -> None:
        """Create the envs; sub-env ``k`` is ``MazeEnv(maze_size, maze_mode, env_seed_k, ...)``.

        :param maze_size: cells per side.
        :param maze_mode: ``"fixed"`` (every sub-env plays the maze chosen by ``seed``) or ``"random"``
            (sub-env ``k`` draws its mazes from its own stream seeded ``seed + k``).
        :param seed: run seed.
        :param n_envs: number of sub-environments (>= 1).
        :param max_episode_steps: time limit in actions (default ``2 * N * N``).
        :param reward_shaping: add potential-based BFS-distance shaping to the reward.
        """
        check_maze_size(maze_size)
        if maze_mode not in ("fixed", "random"):
            raise ValueError(f"maze_mode must be 'fixed' or 'random', got {maze_mode!r}")
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self.maze_size = maze_size
        self.maze_mode = maze_mode
        self.render_mode: str | None = None
        self.reward_shaping = reward_shaping
        self.max_episode_steps = max_episode_steps or maze_env.default_max_episode_steps(maze_size)
        env_seeds = [seed if maze_mode == "fixed" else seed + k for k in range(n_envs)]
        self._streams = [np.random.Generator(np.random.PCG64(s)) for s in env_seeds]
        # MazeEnv starts on the maze its seed names; in random mode that maze only lives until the first
        # reset, so it is generated on demand (get_attr before reset) rather than n_envs times up front.
        self._fixed = _LoadedMaze(generate_maze(maze_size, seed % TRAIN_SEED_LIMIT))
        self._initial_seeds = [s % TRAIN_SEED_LIMIT for s in env_seeds]
        self._loaded: list[_LoadedMaze | None] = [self._fixed if maze_mode == "fixed" else None] * n_envs
        self._goal = maze_size - 1
        self._rows = np.zeros(n_envs, dtype=np.int64)
        self._cols = np.zeros(n_envs, dtype=np.int64)
        self._steps = np.zeros(n_envs, dtype=np.int64)
        self._walls = np.zeros((n_envs, 4, maze_size, maze_size), dtype=np.uint8)
        self._potential = np.zeros((n_envs, maze_size, maze_size), dtype=np.float64)
        self._obs = np.zeros((n_envs, N_OBS_CHANNELS, maze_size, maze_size), dtype=np.uint8)
        self._obs[:, GOAL_CHANNEL, self._goal, self._goal] = 1
        if maze_mode == "fixed":
            self._walls[:] = self._fixed.walls
            self._obs[:, :4] = self._fixed.walls
            self._potential[:] = self._fixed.potential
        self._index = np.arange(n_envs)
        self._actions = np.zeros(n_envs, dtype=np.int64)
        observation_space = spaces.Box(0, 1, shape=(N_OBS_CHANNELS, maze_size, maze_size), dtype=np.uint8)
        super().__init__(n_envs, observation_space, spaces.Discrete(len(ACTIONS)))

    def _maze_of(self, k: int) -> _LoadedMaze:
        loaded = self._loaded[k]
        if loaded is None:
            loaded = _LoadedMaze(generate_maze(self.maze_size, self._initial_seeds[k]))
            self._loaded[k] = loaded
        return loaded

    def _reset_one(self, k: int, seed: int | None, options: dict[str, Any]) -> None:
        """``MazeEnv.reset`` for sub-env ``k``: choose its maze, put the agent on the start."""
        forced = options.get("maze_seed")
        current = self._loaded[k]
        if forced is not None:
            if current is None or int(forced) != current.maze.seed:
                self._load(k, _LoadedMaze(generate_maze(self.maze_size, int(forced))))
        elif self.maze_mode == "random":
            if seed is not None:
                self._streams[k] = np.random.Generator(np.random.PCG64(seed))
            maze_seed = int(self._streams[k].integers(0, TRAIN_SEED_LIMIT))
            self._load(k, _LoadedMaze(generate_maze(self.maze_size, maze_seed)))
        elif current is not self._fixed:
            self._load(k, self._fixed)  # back from a forced evaluation maze
        self._obs[k, AGENT_CHANNEL, self._rows[k], self._cols[k]] = 0
        self._rows[k] = 0
        self._cols[k] = 0
        self._obs[k, AGENT_CHANNEL, 0, 0] = 1
        self._steps[k] = 0
        self.reset_infos[k] = self._info(k)

    def _load(self, k: int, loaded: _LoadedMaze) -> None:
        self._loaded[k] = loaded
        self._walls[k] = loaded.walls
        self._obs[k, :4] = loaded.walls
        if self.reward_shaping:
            self._potential[k] = loaded.potential

    def _info(self, k: int) -> dict[str, Any]:
        maze = self._maze_of(k).maze
        agent_pos = (2 * int(self._rows[k]) + 1, 2 * int(self._cols[k]) + 1)
        return {"maze_seed": maze.seed, "agent_pos": agent_pos, "steps": int(self._steps[k])}

    def reset(self) -> VecEnvObs:
        """Reset every sub-env (seeds from ``seed()`` and options from ``set_options()`` apply once)."""
        for k in range(self.num_envs):
            self._reset_one(k, self._seeds[k], self._options[k] or {})
        self._reset_seeds()
        self._reset_options()
        return self._obs.copy()

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions for ``step_wait``.

        :param actions: one action index per sub-env.
        """
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        """Move every agent one cell where the passage is open; reset the sub-envs whose episode ended."""
        actions, rows, cols, index = self._actions, self._rows, self._cols, self._index
        moved = self._walls[index, actions, rows, cols].astype(bool)
        new_rows = rows + _ROW_STEP[actions] * moved
        new_cols = cols + _COL_STEP[actions] * moved
        self._steps += 1
        terminated = (new_rows == self._goal) & (new_cols == self._goal)
        truncated = ~terminated & (self._steps >= self.max_episode_steps)
        # Same float64 operations in the same order as MazeEnv.step, so rewards match bit for bit.
        rewards = (-STEP_PENALTY + np.where(terminated, GOAL_REWARD, 0.0)) - np.where(
            moved, 0.0, WALL_PENALTY
        )
        if self.reward_shaping:
            potential = self._potential
            rewards = rewards + (potential[index, new_rows, new_cols] - potential[index, rows, cols])
        self._obs[index, AGENT_CHANNEL, rows, cols] = 0
        self._obs[index, AGENT_CHANNEL, new_rows, new_cols] = 1
        self._rows, self._cols = new_rows, new_cols
        dones = terminated | truncated
        seeds = [loaded.maze.seed if loaded is not None else 0 for loaded in self._loaded]
        positions = zip((2 * new_rows + 1).tolist(), (2 * new_cols + 1).tolist(), strict=True)
        infos: list[dict[str, Any]] = [
            {"maze_seed": s, "agent_pos": p, "steps": n, "TimeLimit.truncated": t}
            for s, p, n, t in zip(seeds, positions, self._steps.tolist(), truncated.tolist(), strict=True)
        ]
        for k in np.flatnonzero(dones).tolist():
            info = infos[k]
            info["is_success"] = bool(terminated[k])
            info["terminal_observation"] = self._obs[k].copy()
            self._reset_one(k, None, {})
        return self._obs.copy(), rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        """Nothing to release."""

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seeds for the next ``reset()``: sub-env ``k`` gets ``seed + k`` (see ``VecEnv.seed``).

        :param seed: base seed (None: a random one).
        """
        return super().seed(seed)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Per-sub-env attribute, as ``MazeEnv`` has it: ``maze``, ``agent_pos`` or a setting.

        :param attr_name: attribute name.
        :param indices: which sub-envs (None: all).
        """
        targets = list(self._get_indices(indices))
        if attr_name == "maze":
            return [self._maze_of(k).maze for k in targets]
        if attr_name == "agent_pos":
            return [self._info(k)["agent_pos"] for k in targets]
        if attr_name in ("maze_size", "maze_mode", "max_episode_steps", "reward_shaping", "render_mode"):
            return [getattr(self, attr_name)] * len(targets)
        raise AttributeError(f"VecMazeEnv sub-envs have no attribute {attr_name!r}")

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Not supported: the sub-envs share their settings.

        :param attr_name: attribute name.
        :param value: new value.
        :param indices: which sub-envs.
        """
        raise NotImplementedError("VecMazeEnv sub-envs share their settings; build a new VecMazeEnv instead")

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Not supported: there are no sub-env objects to call.

        :param method_name: method name.
        :param method_args: positional arguments.
        :param indices: which sub-envs.
        :param method_kwargs: keyword arguments.
        """
        raise NotImplementedError(f"VecMazeEnv has no sub-env objects to call {method_name!r} on")

    def env_is_wrapped(
        self, wrapper_class: type[gymnasium.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """No sub-env is wrapped.

        :param wrapper_class: wrapper type.
        :param indices: which sub-envs.
        """
        return [False] * len(list(self._get_indices(indices)))

    def get_images(self) -> Sequence[np.ndarray | None]:
        """No rendering (``render_mode`` is None), as for the sub-envs it replaces."""
        return [None] * self.num_envs
