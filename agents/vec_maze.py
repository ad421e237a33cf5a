"""``VecMazeEnv``: ``n_envs`` copies of ``RLMaze-v0`` stepped together with array operations.

Behaves exactly like ``DummyVecEnv([MazeEnv(...) for each sub-env])`` as ``agents.building`` built it
before (same seeds, mazes, observations, rewards, dones and infos; ``tests/test_vec_maze.py`` replays both),
but one ``step`` is a handful of numpy operations over all envs instead of a Python call per env: at
hundreds of envs the per-env Python overhead, not the maze logic, was the cost. ``maze_env.MazeEnv`` stays
the single-maze reference (gymnasium's checker, rollouts, replay). The sub-envs that reset on one step get
their mazes' passage bits and goal distances together from ``mazes.batch`` (hundreds at a shared time
limit as numpy operations over all of them); fixed mode computes its one maze once. What remains per env
and step is SB3's info dict, copied from a per-env template.
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
from mazes.batch import passages_and_distances
from mazes.grid import check_maze_size, generate_maze

# Reward before shaping, indexed by 2 * terminated + moved: MazeEnv.step's float64 operations, in its order.
_BASE_REWARD = np.array(
    [
        (-STEP_PENALTY + (GOAL_REWARD if t else 0.0)) - (0.0 if m else WALL_PENALTY)
        for t in (0, 1)
        for m in (0, 1)
    ]
)


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
        seed = int(seed)  # a numpy integer would show up as one in the infos' maze_seed
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
        # reset, so its arrays are loaded on demand (a forced reset onto it) rather than n_envs times.
        self._fixed_seed = seed % TRAIN_SEED_LIMIT
        self._maze_seeds = [s % TRAIN_SEED_LIMIT for s in env_seeds]
        self._arrays_loaded = [maze_mode == "fixed"] * n_envs
        self._info_templates = [_info_template(s) for s in self._maze_seeds]
        goal = maze_size - 1
        # Agents are tracked as flat cell indices (row * N + col); stepping indexes flat views of the
        # observation and potential buffers, one gather per quantity instead of four-array fancy indexing.
        cells = maze_size * maze_size
        self._goal_cell = goal * maze_size + goal
        self._cell_step = np.array([dr * maze_size + dc for dr, dc in ACTION_DELTAS], dtype=np.int64)
        self._cells = np.zeros(n_envs, dtype=np.int64)
        self._steps = np.zeros(n_envs, dtype=np.int64)
        self._potential = np.zeros((n_envs, maze_size, maze_size), dtype=np.float64)
        self._obs = np.zeros((n_envs, N_OBS_CHANNELS, maze_size, maze_size), dtype=np.uint8)
        self._obs[:, GOAL_CHANNEL, goal, goal] = 1
        self._obs_flat = self._obs.reshape(-1)
        self._potential_flat = self._potential.reshape(-1)
        self._obs_base = np.arange(n_envs, dtype=np.int64) * (N_OBS_CHANNELS * cells)
        self._agent_base = self._obs_base + AGENT_CHANNEL * cells
        self._potential_base = np.arange(n_envs, dtype=np.int64) * cells
        fixed_walls, fixed_dist = passages_and_distances(maze_size, [self._fixed_seed])
        self._fixed_walls, self._fixed_potential = fixed_walls[0], _potential(fixed_dist[0])
        if maze_mode == "fixed":
            self._load(np.arange(n_envs), self._fixed_walls, self._fixed_potential)
        # Square coordinates of each cell, as MazeEnv reports agent_pos: one shared tuple per cell.
        # An object array, so one gather gives every env's tuple (no Python loop per env).
        self._squares = np.empty(maze_size * maze_size, dtype=object)
        for c in range(maze_size * maze_size):
            self._squares[c] = (2 * (c // maze_size) + 1, 2 * (c % maze_size) + 1)
        self._actions = np.zeros(n_envs, dtype=np.int64)
        observation_space = spaces.Box(0, 1, shape=(N_OBS_CHANNELS, maze_size, maze_size), dtype=np.uint8)
        super().__init__(n_envs, observation_space, spaces.Discrete(len(ACTIONS)))

    def _reset_many(
        self, envs: list[int], seeds: Sequence[int | None], options: Sequence[dict[str, Any]]
    ) -> None:
        """``MazeEnv.reset`` for the sub-envs ``envs``: choose their mazes, put the agents on the start.

        New mazes are generated together (``passages_and_distances``): at a shared time limit hundreds of
        sub-envs reset on the same step.
        """
        to_generate: list[int] = []
        back_to_fixed: list[int] = []
        for k, seed, option in zip(envs, seeds, options, strict=True):
            forced = option.get("maze_seed")
            if forced is not None:
                if not self._arrays_loaded[k] or int(forced) != self._maze_seeds[k]:
                    self._maze_seeds[k] = int(forced)
                    to_generate.append(k)
            elif self.maze_mode == "random":
                if seed is not None:
                    self._streams[k] = np.random.Generator(np.random.PCG64(seed))
                self._maze_seeds[k] = int(self._streams[k].integers(0, TRAIN_SEED_LIMIT))
                to_generate.append(k)
            elif self._maze_seeds[k] != self._fixed_seed or not self._arrays_loaded[k]:
                self._maze_seeds[k] = self._fixed_seed  # back from a forced evaluation maze
                back_to_fixed.append(k)
        if to_generate:
            walls, dist = passages_and_distances(self.maze_size, [self._maze_seeds[k] for k in to_generate])
            self._load(np.array(to_generate), walls, _potential(dist))
        if back_to_fixed:
            self._load(np.array(back_to_fixed), self._fixed_walls, self._fixed_potential)
        index = np.array(envs)
        self._obs_flat[self._agent_base[index] + self._cells[index]] = 0
        self._cells[index] = 0
        self._obs_flat[self._agent_base[index]] = 1
        self._steps[index] = 0
        for k in envs:
            self.reset_infos[k] = self._info(k)
            self._info_templates[k] = _info_template(self._maze_seeds[k])

    def _load(self, envs: np.ndarray, walls: np.ndarray, potential: np.ndarray) -> None:
        for k in envs.tolist():
            self._arrays_loaded[k] = True
        self._obs[envs, :4] = walls
        if self.reward_shaping:
            self._potential[envs] = potential

    def _info(self, k: int) -> dict[str, Any]:
        agent_pos = self._squares[int(self._cells[k])]
        return {"maze_seed": self._maze_seeds[k], "agent_pos": agent_pos, "steps": int(self._steps[k])}

    def reset(self) -> VecEnvObs:
        """Reset every sub-env (seeds from ``seed()`` and options from ``set_options()`` apply once)."""
        self._reset_many(list(range(self.num_envs)), self._seeds, [o or {} for o in self._options])
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
        actions, cells, cells_per_env = self._actions, self._cells, self.maze_size * self.maze_size
        moved = self._obs_flat[self._obs_base + actions * cells_per_env + cells].view(bool)
        new_cells = cells + self._cell_step[actions] * moved
        self._steps += 1
        terminated = new_cells == self._goal_cell
        truncated = ~terminated & (self._steps >= self.max_episode_steps)
        rewards = _BASE_REWARD[2 * terminated + moved]
        if self.reward_shaping:
            potential, base = self._potential_flat, self._potential_base
            rewards += potential[base + new_cells] - potential[base + cells]
        self._obs_flat[self._agent_base + cells] = 0
        self._obs_flat[self._agent_base + new_cells] = 1
        self._cells = new_cells
        dones = terminated | truncated
        # Copying a per-env template (C) and setting two keys is cheaper than a dict display per env.
        # TimeLimit.truncated stays False for every env that goes on; the done ones get their value below.
        infos: list[dict[str, Any]] = list(map(dict.copy, self._info_templates))
        for info, square, steps in zip(
            infos, self._squares[new_cells].tolist(), self._steps.tolist(), strict=True
        ):
            info["agent_pos"] = square
            info["steps"] = steps
        done_envs = np.flatnonzero(dones).tolist()
        if done_envs:
            for k in done_envs:
                info = infos[k]
                info["TimeLimit.truncated"] = bool(truncated[k])
                info["is_success"] = bool(terminated[k])
                info["terminal_observation"] = self._obs[k].copy()
            self._reset_many(done_envs, [None] * len(done_envs), [{}] * len(done_envs))
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
            return [generate_maze(self.maze_size, self._maze_seeds[k]) for k in targets]
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


def _potential(distances: np.ndarray) -> np.ndarray:
    """Shaping potentials ``-SHAPING_SCALE * d``: the same float64 values ``MazeEnv._potential`` computes."""
    return -SHAPING_SCALE * distances.astype(np.float64)


def _info_template(maze_seed: int) -> dict[str, Any]:
    """A step's info (``MazeEnv``'s keys and DummyVecEnv's ``TimeLimit.truncated``) before the agent moves."""
    return {"maze_seed": maze_seed, "agent_pos": None, "steps": 0, "TimeLimit.truncated": False}
