"""Search spaces: the distributions a sweep samples each hyperparameter from, our defaults per
algorithm (in the spirit of rl-baselines3-zoo's), and their translation to Optuna's distributions.

A search space maps a Stable-Baselines3 constructor argument (the keys `hyperparameters` accepts) to
one of: `{"type": "log_uniform", "low", "high"}`, `{"type": "uniform", "low", "high"}`,
`{"type": "int", "low", "high", "log": false}` or `{"type": "categorical", "choices": [...]}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

GAMMAS = [0.9, 0.95, 0.98, 0.99, 0.995, 0.999]

# Defaults per algorithm. PPO's `batch_size` choices are cut to those that fit one rollout
# (`timesteps_per_episode` steps): see `default_search_space`.
DEFAULT_SEARCH_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "PPO": {
        "learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 1e-2},
        "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256, 512]},
        "n_epochs": {"type": "int", "low": 1, "high": 10},
        "gamma": {"type": "categorical", "choices": GAMMAS},
        "gae_lambda": {"type": "categorical", "choices": [0.8, 0.9, 0.92, 0.95, 0.98, 1.0]},
        "clip_range": {"type": "categorical", "choices": [0.1, 0.2, 0.3, 0.4]},
        "ent_coef": {"type": "log_uniform", "low": 1e-8, "high": 0.1},
    },
    "DQN": {
        "learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 1e-2},
        "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]},
        "gamma": {"type": "categorical", "choices": GAMMAS},
        "train_freq": {"type": "categorical", "choices": [1, 4, 8, 16]},
        "target_update_interval": {"type": "categorical", "choices": [1, 1000, 5000, 10000]},
        "exploration_fraction": {"type": "uniform", "low": 0.05, "high": 0.5},
        "exploration_final_eps": {"type": "uniform", "low": 0.0, "high": 0.2},
        "learning_starts": {"type": "categorical", "choices": [0, 1000, 5000]},
    },
}


def default_search_space(algorithm: str, timesteps_per_episode: int) -> dict[str, dict[str, Any]]:
    """The default space for `algorithm`; for PPO only batch sizes up to one rollout (at least the
    smallest choice, which the run's own validation then explains if it does not fit)."""
    space = {key: dict(value) for key, value in DEFAULT_SEARCH_SPACES[algorithm].items()}
    if algorithm == "PPO":
        choices = space["batch_size"]["choices"]
        space["batch_size"]["choices"] = [c for c in choices if c <= timesteps_per_episode] or choices[:1]
    return space


def distributions(space: Mapping[str, Mapping[str, Any]]) -> dict[str, BaseDistribution]:
    """Optuna's distributions for a (validated) search space."""
    result: dict[str, BaseDistribution] = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "categorical":
            result[key] = CategoricalDistribution(list(spec["choices"]))
        elif kind == "int":
            result[key] = IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            result[key] = FloatDistribution(
                float(spec["low"]), float(spec["high"]), log=kind == "log_uniform"
            )
    return result
