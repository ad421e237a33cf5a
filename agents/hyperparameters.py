"""Hyperparameters of our agents: the keys a user may set, our defaults, how they merge, what was used.

A run's SB3 constructor arguments are our defaults for the algorithm, the user's overrides on top, and for
PPO a rollout length derived from ``timesteps_per_episode`` (``ppo_n_steps``) unless the user set one.
After building, ``effective_hyperparameters`` reads back what the model really uses, for the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

import maze_env
from agents.policies import DEFAULT_POLICY, policy_kwargs
from mazes.grid import check_maze_size

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

ALGORITHMS: tuple[str, ...] = ("PPO", "DQN")

MAX_TIMESTEPS_PER_EPISODE = 1_000_000

# Bounds a run's hyperparameters must keep to on this service (see `budget_violation`). A stop request is
# checked before every gradient step, so these keep one step, one update and the buffers reasonable.
MAX_GRADIENT_STEPS = 1_000  # DQN gradient steps per update
MAX_BATCH_SIZE = 16_384  # one gradient step through the planner on a larger batch takes minutes on a CPU
# On a GPU a minibatch of 65,536 is what made PPO with 16,384 envs train 22x as fast as two CPU cores
# (bench/RESULTS.md "GPU throughput"); one such step takes milliseconds there.
MAX_GPU_BATCH_SIZE = 65_536
MAX_BUFFER_BYTES = 2 * 1024**3  # observations held by PPO's rollout buffer or DQN's replay buffer


class _Overrides(BaseModel):
    # As the request schemas: no `true` or "10" for an integer, no NaN or ±Infinity (Infinity passes a bound
    # like `gt=0`, and neither has a JSON form to echo back in a 422).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class PPOHyperparameters(_Overrides):
    """The PPO constructor arguments a user may override (names as in Stable-Baselines3)."""

    learning_rate: float | None = Field(None, gt=0, le=1)
    n_steps: int | None = Field(None, ge=2, le=MAX_TIMESTEPS_PER_EPISODE)
    batch_size: int | None = Field(None, ge=2, le=1_000_000)
    n_epochs: int | None = Field(None, ge=1, le=100)
    gamma: float | None = Field(None, gt=0, le=1)
    gae_lambda: float | None = Field(None, ge=0, le=1)
    clip_range: float | None = Field(None, gt=0, le=10)
    ent_coef: float | None = Field(None, ge=0, le=10)
    vf_coef: float | None = Field(None, ge=0, le=10)
    max_grad_norm: float | None = Field(None, gt=0, le=1000)
    target_kl: float | None = Field(None, gt=0)
    normalize_advantage: bool | None = Field(None)


class DQNHyperparameters(_Overrides):
    """The DQN constructor arguments a user may override (names as in Stable-Baselines3)."""

    learning_rate: float | None = Field(None, gt=0, le=1)
    buffer_size: int | None = Field(None, ge=1, le=10_000_000)
    learning_starts: int | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1, le=1_000_000)
    tau: float | None = Field(None, gt=0, le=1)
    gamma: float | None = Field(None, gt=0, le=1)
    train_freq: int | None = Field(None, ge=1)
    gradient_steps: int | None = Field(None, ge=-1)
    target_update_interval: int | None = Field(None, ge=1)
    exploration_fraction: float | None = Field(None, gt=0, le=1)
    exploration_initial_eps: float | None = Field(None, ge=0, le=1)
    exploration_final_eps: float | None = Field(None, ge=0, le=1)
    max_grad_norm: float | None = Field(None, gt=0, le=1000)


HYPERPARAMETER_MODELS: dict[str, type[BaseModel]] = {"PPO": PPOHyperparameters, "DQN": DQNHyperparameters}


def check_algorithm(algorithm: str) -> None:
    """Raise ``ValueError`` unless ``algorithm`` is one of ``ALGORITHMS``.

    :param algorithm: the algorithm's name.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def default_n_envs(algorithm: str) -> int:
    """Number of mazes stepped together (one ``VecMazeEnv``) we train with.

    :param algorithm: ``"PPO"`` or ``"DQN"``.
    """
    check_algorithm(algorithm)
    return 16


def default_hyperparameters(algorithm: str, maze_size: int, policy: str = DEFAULT_POLICY) -> dict[str, Any]:
    """SB3 constructor kwargs we use by default (``merged_hyperparameters`` puts user overrides on top).

    The training hyperparameters are the same for every policy choice, so that a comparison of policies
    compares networks; ``policy_kwargs`` come from ``agents.policies.policy_kwargs``.

    :param algorithm: ``"PPO"`` or ``"DQN"``.
    :param maze_size: cells per side.
    :param policy: one of ``agents.policies.POLICIES``.
    """
    check_algorithm(algorithm)
    check_maze_size(maze_size)
    network = policy_kwargs(policy, algorithm)
    if algorithm == "PPO":
        return {
            "learning_rate": 1e-3,
            "n_steps": 128,
            "batch_size": 256,
            "n_epochs": 4,
            "gamma": 0.99,
            "gae_lambda": 0.95,
            "clip_range": 0.2,
            "ent_coef": 0.01,
            "vf_coef": 0.5,
            "max_grad_norm": 0.5,
            "policy_kwargs": network,
        }
    return {
        # 2e-4, not 1e-3: with the 10,000-step target interval below, held-out success stayed at 100% at
        # every evaluation to 200k steps on 5 of 5 seeds, where 1e-3 fell to 0% on seeds 1 and 2 at
        # 184k-192k (issue 18, bench/RESULTS.md "Planner stability"). The cost: 95% after 3k-4k steps
        # instead of 2k (evaluated every 1,000 steps; a run's adaptive schedule may see it at 8k).
        "learning_rate": 2e-4,
        "buffer_size": 50_000,
        "learning_starts": 1_000,
        "batch_size": 128,
        # 0.95, not 0.99 (issue 18): with 0.99, training seed 2 on random 10x10 mazes fell from 100% held-out
        # success to 0% at 459k steps, once exploration had ended: a few cells from the goal the Q-values of
        # the step toward it and the step away differ by only ~4%, and the head's error crossed that gap.
        # 0.95 widens it (~0.12 instead of ~0.045); seeds 1-5 then stayed at 100% at every evaluation to
        # 2.048M steps, and the time to 95% at maze 10, 20 and 30 was unchanged (bench/RESULTS.md).
        "gamma": 0.95,
        "train_freq": 1,
        "gradient_steps": 1,
        # The target network is synced every 10,000 env steps (SB3's own default), not every 1,000: with
        # 1,000 the greedy policy on random 10x10 mazes fell from 100% held-out success to 0% for
        # stretches from 32k-40k steps on (issue 18: 2 of 2 seeds; also 4 of 4 with exploration_final_eps
        # 0.1, and a 5x lower learning rate only put it off to 76k on seed 2). With 10,000 every
        # evaluation up to 80k steps stayed at 100% on 5 of 5 seeds, as fast to 95% (2k steps or
        # sooner), but run on to 200k steps seeds 1 and 2 still fell to 0% (at 184k-192k and at 192k):
        # on its own it delays the collapse; with the lower learning rate above none was seen to 200k.
        "target_update_interval": 10_000,
        "exploration_fraction": 0.2,
        "exploration_final_eps": 0.02,
        "max_grad_norm": 10.0,
        # The TD loss, unlike PPO's, pulled the planner's reward map off the goal now and then: greedy
        # success on a fixed 5x5 maze fell from 100% to 0% and back between checkpoints (measured twice).
        # With the planner prior frozen DQN trains only the Q-head, and stayed at 100% at every checkpoint.
        "policy_kwargs": network,
    }


def ppo_n_steps(overrides: Mapping[str, Any], n_envs: int, timesteps_per_episode: int) -> int:
    """PPO's rollout length per env: the user's ``n_steps``, else ``timesteps_per_episode // n_envs``.

    Unless the user sets ``n_steps``, one training iteration is then ``timesteps_per_episode`` env steps
    over all envs.

    :param overrides: user hyperparameters.
    :param n_envs: number of parallel envs.
    :param timesteps_per_episode: env steps per training iteration, over all envs.
    """
    if "n_steps" in overrides:
        return int(overrides["n_steps"])
    return max(1, timesteps_per_episode // n_envs)


def merged_hyperparameters(
    algorithm: str,
    maze_size: int,
    n_envs: int,
    overrides: Mapping[str, Any],
    timesteps_per_episode: int,
    policy: str = DEFAULT_POLICY,
) -> dict[str, Any]:
    """Defaults with ``overrides`` on top; for PPO ``n_steps`` from ``ppo_n_steps``.

    :param algorithm: ``"PPO"`` or ``"DQN"``.
    :param maze_size: cells per side.
    :param n_envs: number of parallel envs.
    :param overrides: user hyperparameters (win over defaults; ``policy_kwargs`` merged key by key, and
        ``features_extractor_kwargs`` inside them too).
    :param timesteps_per_episode: env steps per training iteration, over all envs.
    :param policy: one of ``agents.policies.POLICIES``.
    """
    params = default_hyperparameters(algorithm, maze_size, policy)
    user = dict(overrides)
    user_policy_kwargs = dict(user.pop("policy_kwargs", None) or {})
    params.update(user)
    extractor_kwargs = {
        **params["policy_kwargs"].get("features_extractor_kwargs", {}),
        **user_policy_kwargs.pop("features_extractor_kwargs", {}),
    }
    params["policy_kwargs"] = {**params["policy_kwargs"], **user_policy_kwargs}
    if extractor_kwargs:
        params["policy_kwargs"]["features_extractor_kwargs"] = extractor_kwargs
    if algorithm == "PPO":
        params["n_steps"] = ppo_n_steps(user, n_envs, timesteps_per_episode)
        rollout = params["n_steps"] * n_envs
        if "batch_size" not in user and params["batch_size"] > rollout:
            params["batch_size"] = rollout  # SB3 needs batch_size <= rollout size
    return params


@dataclass(frozen=True)
class BoundViolation:
    """A hyperparameter beyond what a run may use.

    :param key: the hyperparameter (name as in Stable-Baselines3).
    :param message: the bound and why, for the user.
    """

    key: str
    message: str


def budget_violation(
    algorithm: str,
    maze_size: int,
    n_envs: int,
    overrides: Mapping[str, Any],
    timesteps_per_episode: int,
    total_timesteps: int,
    gpu: bool = False,
) -> BoundViolation | None:
    """The first hyperparameter (merged with our defaults) out of bounds for this run's budget and for
    this machine, or None. Out of bounds: an update so long or an interval so wide that the run could not
    end within its budget, or buffers that would not fit in memory.

    :param algorithm: ``"PPO"`` or ``"DQN"``.
    :param maze_size: cells per side.
    :param n_envs: number of parallel envs.
    :param overrides: user hyperparameters.
    :param timesteps_per_episode: env steps per training iteration, over all envs.
    :param total_timesteps: the run's budget in env steps.
    :param gpu: the run trains on a CUDA device (larger minibatches are allowed there).
    """
    params = merged_hyperparameters(algorithm, maze_size, n_envs, overrides, timesteps_per_episode)
    observation_bytes = maze_env.N_OBS_CHANNELS * maze_size * maze_size
    batch_size = int(params["batch_size"])
    budget = f"the run's budget of {total_timesteps} steps"
    # (key, what is bounded, its value, the bound, what the bound is)
    checks: list[tuple[str, str, int, int, str]]
    if algorithm == "PPO":
        rollout = int(params["n_steps"]) * n_envs
        checks = [
            ("n_steps", "n_steps × n_envs", rollout, total_timesteps, budget),
            ("n_steps", "n_steps × n_envs", rollout, MAX_BUFFER_BYTES // observation_bytes, "rollout memory"),
            ("batch_size", "batch_size", batch_size, rollout, "one rollout: n_steps × n_envs"),
        ]
    else:
        train_freq = int(params["train_freq"])
        gradient_steps = int(params["gradient_steps"])
        # -1: as many gradient steps as env steps collected since the last update.
        per_update = gradient_steps if gradient_steps >= 0 else train_freq * n_envs
        cap = f"{MAX_GRADIENT_STEPS} per update, and no more than {budget}"
        replay_cap = MAX_BUFFER_BYTES // (2 * observation_bytes)
        checks = [
            ("train_freq", "train_freq × n_envs", train_freq * n_envs, total_timesteps, budget),
            ("gradient_steps", "gradient_steps", per_update, min(MAX_GRADIENT_STEPS, total_timesteps), cap),
            ("buffer_size", "buffer_size", int(params["buffer_size"]), replay_cap, "replay buffer memory"),
        ]
    batch_cap, where = (MAX_GPU_BATCH_SIZE, "GPU") if gpu else (MAX_BATCH_SIZE, "CPU")
    checks.append(("batch_size", "batch_size", batch_size, batch_cap, f"this service's cap on a {where}"))
    for key, bounded, value, bound, what in checks:
        if value > bound:
            return BoundViolation(
                key, f"{key}: {bounded} = {value} must be at most {bound} ({what}; maze {maze_size})"
            )
    return None


def effective_hyperparameters(model: BaseAlgorithm, algorithm: str) -> dict[str, Any]:
    """The values training really used, for the record (schedules shown at their starting value).

    :param model: the built (or loaded) model.
    :param algorithm: ``"PPO"`` or ``"DQN"``: which keys to read back.
    """
    used: dict[str, Any] = {}
    for name in HYPERPARAMETER_MODELS[algorithm].model_fields:
        value = getattr(model, name, None)
        if callable(value):
            value = value(1.0)
        frequency = getattr(value, "frequency", None)  # DQN's TrainFreq(frequency, unit)
        if frequency is not None:
            value = int(frequency)
        if isinstance(value, int | float | bool | str) or value is None:
            used[name] = value
    used["n_envs"] = model.n_envs
    used["policy"] = type(model.policy).__name__
    used["policy_kwargs"] = repr(getattr(model, "policy_kwargs", {}))
    return used
