"""What a run records about itself: its parameters and library versions (MLflow), its ONNX metadata."""

from __future__ import annotations

import platform
from typing import Any

import torch
from stable_baselines3.common.vec_env import VecEnv

import maze_env
from agents import onnx_policy
from records.tables import TrainingRun, run_policy


def fixed_maze_seed(env: VecEnv) -> int:
    """The seed of the one maze a `fixed`-mode run trains on."""
    return int(env.get_attr("maze", [0])[0].seed)


def run_parameters(run: TrainingRun, device: str, used: dict[str, Any]) -> dict[str, Any]:
    """Everything that defines a run, for MLflow's parameters.

    ``policy`` is the run's network choice; SB3's policy class (``used["policy"]``) is ``policy_class``.
    """
    return {
        **used,
        "policy": run_policy(run),
        "policy_class": used.get("policy"),
        "algorithm": run.algorithm,
        "total_episodes": run.total_episodes,
        "timesteps_per_episode": run.timesteps_per_episode,
        "total_timesteps": run.total_timesteps,
        "maze_size": run.maze_size,
        "maze_mode": run.maze_mode,
        "seed": run.seed,
        "device": device,
        **library_versions(),
    }


def library_versions() -> dict[str, str]:
    import gymnasium
    import stable_baselines3

    return {
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "stable_baselines3_version": stable_baselines3.__version__,
        "gymnasium_version": gymnasium.__version__,
    }


def onnx_metadata(run: TrainingRun, env: VecEnv) -> dict[str, str]:
    """What a client needs to run the exported model without asking the service anything else."""
    metadata = {
        onnx_policy.METADATA_ALGORITHM: run.algorithm,
        onnx_policy.METADATA_POLICY: run_policy(run),
        onnx_policy.METADATA_MAZE_SIZE: str(run.maze_size),
        onnx_policy.METADATA_MAZE_MODE: run.maze_mode,
        onnx_policy.METADATA_OBSERVATION_ENCODING: maze_env.OBSERVATION_ENCODING,
        onnx_policy.METADATA_ACTION_MEANINGS: ",".join(maze_env.ACTIONS),
        onnx_policy.METADATA_EXPERIMENT_ID: run.id,
    }
    if run.maze_mode == "fixed":
        metadata[onnx_policy.METADATA_MAZE_SEED] = str(fixed_maze_seed(env))
    return metadata
