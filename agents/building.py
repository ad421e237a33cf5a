"""Build a run's SB3 model and its vectorised maze env, or load a saved model back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecEnv

from agents.hyperparameters import check_algorithm, merged_hyperparameters
from agents.policies import DEFAULT_POLICY
from agents.vec_maze import VecMazeEnv
from rl_maze.algorithms import MazeDQN, MazePPO
from rl_maze.planner import MazeDQNPolicy

# SB3's algorithms, plus the reward-model steps of a learned planner (rl_maze.algorithms).
ALGORITHM_CLASSES: dict[str, type[MazePPO] | type[MazeDQN]] = {"PPO": MazePPO, "DQN": MazeDQN}


def make_vec_env(maze_size: int, maze_mode: str, seed: int, n_envs: int) -> VecEnv:
    """Build the batched maze env (``VecMazeEnv``: the same episodes as a ``DummyVecEnv`` of ``MazeEnv``).

    Sub-env ``k`` gets env seed ``seed + k`` (its own maze-seed stream in random mode); in fixed mode they
    all play the run's one maze, chosen by ``seed``.

    :param maze_size: cells per side.
    :param maze_mode: ``"fixed"`` or ``"random"``.
    :param seed: run seed.
    :param n_envs: number of sub-environments (>= 1).
    """
    vec_env = VecMazeEnv(maze_size, maze_mode, seed, n_envs)
    vec_env.seed(seed)
    return vec_env


def build_model(
    algorithm: str,
    env: VecEnv,
    hyperparameters: dict[str, Any],
    seed: int,
    device: str,
    timesteps_per_episode: int,
    policy: str = DEFAULT_POLICY,
) -> BaseAlgorithm:
    """Create an SB3 model with our defaults merged with user ``hyperparameters`` (user values win).

    For PPO one training iteration is ``timesteps_per_episode`` env steps in total: ``n_steps =
    timesteps_per_episode // env.num_envs`` unless the user sets ``n_steps``.

    :param algorithm: ``"PPO"`` or ``"DQN"``.
    :param env: vectorised maze env (from ``make_vec_env``).
    :param hyperparameters: user overrides of SB3 constructor kwargs.
    :param seed: SB3 seed.
    :param device: torch device, e.g. ``"cpu"``.
    :param timesteps_per_episode: env steps per training iteration.
    :param policy: the network, one of ``agents.policies.POLICIES`` (see there).
    """
    check_algorithm(algorithm)
    shape = env.observation_space.shape
    assert shape is not None
    params = merged_hyperparameters(
        algorithm, int(shape[1]), env.num_envs, hyperparameters, timesteps_per_episode, policy
    )
    model: BaseAlgorithm
    if algorithm == "PPO":
        model = MazePPO("MlpPolicy", env, seed=seed, device=device, verbose=0, **params)
    else:
        model = MazeDQN(MazeDQNPolicy, env, seed=seed, device=device, verbose=0, **params)
    model.set_logger(in_memory_logger())
    return model


def load_model(algorithm: str, path: Path | str, env: VecEnv | None, device: str) -> BaseAlgorithm:
    """Load a model saved with ``model.save`` (a ``model.zip``), ready to train on or to predict with.

    Models saved before the ``agents`` package load too: their pickled ``agents.<Class>`` paths still
    resolve (see ``agents/__init__.py``).

    :param algorithm: ``"PPO"`` or ``"DQN"``, as the model was trained.
    :param path: the saved file.
    :param env: the env to go on training in (None: predict only).
    :param device: torch device, e.g. ``"cpu"``.
    """
    check_algorithm(algorithm)
    model = ALGORITHM_CLASSES[algorithm].load(path, env=env, device=device)
    model.set_logger(in_memory_logger())
    return model


def in_memory_logger() -> Logger:
    """An SB3 logger that writes nowhere (our callbacks read its values): SB3's default one creates an
    empty /tmp/SB3-<time> directory on every `learn()`, which a long-running service would pile up.
    A model loaded from a file gets the default one back, so it needs this again."""
    return Logger(folder=None, output_formats=[])
