"""Export trained PPO/DQN policies to ONNX, verified against the PyTorch policy before they are published.

The exported graph takes observations exactly as the environment produces them (input ``observation``,
dtype of the observation space, dynamic batch axis); SB3's preprocessing (float cast, image scaling,
one-hot of discrete spaces) is inside the graph. ``VecNormalize`` statistics are not: they live in the
environment wrapper, so a policy trained behind ``VecNormalize`` needs the same normalisation at
inference time. Likewise the input layout is the model's observation space: for channels-last images SB3
inserts ``VecTransposeImage`` outside the policy, so such a graph takes channels-first input (the maze
observations are channels-first already).

The file's contract (input and output names, metadata keys) is in ``agents.onnx_policy``, with the
runtime that reads it.

Only numpy and onnxruntime are imported at module level (torch and Stable-Baselines3 inside the functions
that need them): ``agents.replay`` reads the metadata keys from here where torch is not installed. The
runtime that plays an exported file is ``agents.onnx_policy.OnnxPolicy``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agents.onnx_graph import OnnxExportError, export_and_reference, uses_planner_tree
from agents.onnx_policy import (
    ACTION_OUTPUT,
    LIBRARY_METADATA_KEYS,
    OnnxPolicy,
)

if TYPE_CHECKING:
    import gymnasium
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecEnv

MIN_OPSET = 14  # SB3's documented export needs opset >= 14

# Random actions mixed into the model's own when collecting observations, so that the verification set
# covers states off the greedy path (a deterministic maze policy can loop between two squares forever).
RANDOM_ACTION_PROBABILITY = 0.5


@dataclass(frozen=True)
class ParityReport:
    """onnxruntime against the PyTorch policy on the same observations."""

    observations: int
    action_agreement: float  # fraction of observations where both pick the same action, 0..1
    max_abs_diff: float  # largest absolute difference on logits / q-values
    tolerance: float
    passed: bool


@dataclass(frozen=True)
class ExportReport:
    """A verified ONNX file and how it was produced."""

    path: Path
    size_bytes: int
    opset: int
    export_seconds: float  # export + verification
    parity: ParityReport
    outputs: tuple[str, ...]


def export_policy(
    model: PPO | DQN,
    out_path: Path,
    metadata: Mapping[str, str],
    verification_observations: np.ndarray,
    opset: int = 17,
    tolerance: float = 1e-4,
    planner_tree: bool = True,
) -> ExportReport:
    """
    Export the model's deterministic policy to ONNX and publish it at ``out_path`` only if it is verified.

    Verification: ``onnx.checker`` passes, and onnxruntime picks the same action as SB3 on every
    verification observation, with logits / q-values within ``tolerance`` (absolute) of PyTorch's.

    :param model: a trained PPO or DQN with a discrete action space and a Box or Discrete observation space
    :param out_path: where the verified ``.onnx`` file goes (replaced atomically; directories are created)
    :param metadata: string key/values stored in the file (algorithm, maze size/mode/seed, experiment id...)
    :param verification_observations: observations as the env produces them, shape (n, *obs_shape)
    :param opset: ONNX opset to export with (at least 14)
    :param tolerance: largest absolute difference allowed on logits / q-values
    :param planner_tree: a frozen planner's graph reads goal distances off the maze's tree, if that
        passes verification (False: its value-iteration sweeps, as a ``Loop``, from the start)
    :return: what was written and how well it agreed with PyTorch
    :raises OnnxExportError: on any failure, with the reason; no file is left at ``out_path`` or beside it
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    _check_request(metadata, verification_observations, opset)
    # A frozen planner's graph first reads goal distances off the maze's tree (fast to run); if that graph
    # cannot be made or disagrees with PyTorch's sweeps (mazes with loops), the sweeps are exported instead.
    attempts = [True, False] if planner_tree and uses_planner_tree(model) else [False]
    try:
        for attempt, tree in enumerate(attempts, start=1):
            try:
                parity, values_output = _publish_verified(
                    model, out_path, metadata, verification_observations, opset, tolerance, tree
                )
                break
            except Exception:
                if attempt == len(attempts):
                    raise
    except OnnxExportError:
        raise
    except Exception as exc:
        raise OnnxExportError(f"{type(exc).__name__}: {exc}") from exc

    return ExportReport(
        path=out_path,
        size_bytes=out_path.stat().st_size,
        opset=opset,
        export_seconds=time.perf_counter() - started,
        parity=parity,
        outputs=(ACTION_OUTPUT, values_output),
    )


def _publish_verified(
    model: PPO | DQN,
    out_path: Path,
    metadata: Mapping[str, str],
    observations: np.ndarray,
    opset: int,
    tolerance: float,
    planner_tree: bool,
) -> tuple[ParityReport, str]:
    """Export, verify in onnxruntime, and only then move the file to ``out_path``; the parity and the
    values output's name. Raises ``OnnxExportError`` when onnxruntime disagrees."""
    model_proto, values_output, torch_values, sb3_actions = export_and_reference(
        model, metadata, observations, opset, planner_tree
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = _write_temp_file(model_proto.SerializeToString(), out_path)
    try:
        parity = _compare_with_onnxruntime(
            temp_path, observations, sb3_actions, torch_values, values_output, tolerance
        )
        if not parity.passed:
            raise OnnxExportError(
                f"onnxruntime disagrees with PyTorch on {parity.observations} observations: "
                f"action agreement {parity.action_agreement:.4f}, max abs diff {parity.max_abs_diff:.3g} "
                f"on {values_output} (tolerance {parity.tolerance:g})"
            )
        os.replace(temp_path, out_path)
    finally:
        temp_path.unlink(missing_ok=True)  # already gone once published
    return parity, values_output


def collect_observations(
    model: BaseAlgorithm, env: VecEnv | gymnasium.Env, n: int, seed: int = 0
) -> np.ndarray:
    """
    Observations from real episodes with the model acting, some actions replaced by random ones.

    The env is reset and stepped: pass an env that is free to use (e.g. the training env once training
    has finished, or a fresh one).

    :param model: the trained model choosing actions (deterministically)
    :param env: a VecEnv, or a gymnasium env (wrapped in a one-env DummyVecEnv)
    :param n: number of observations to return
    :param seed: seeds the env and the random-action choice
    :return: array of shape (n, *obs_shape) in the env's observation dtype
    """
    from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

    vec_env = env if isinstance(env, VecEnv) else DummyVecEnv([lambda: env])
    rng = np.random.default_rng(seed)
    n_actions = int(vec_env.action_space.n)  # type: ignore[attr-defined]
    vec_env.seed(seed)
    obs = vec_env.reset()
    collected: list[np.ndarray] = []
    count = 0
    while count < n:
        batch = np.asarray(obs)
        collected.append(batch)
        count += len(batch)
        actions, _ = model.predict(batch, deterministic=True)
        explore = rng.random(len(batch)) < RANDOM_ACTION_PROBABILITY
        actions = np.where(explore, rng.integers(n_actions, size=len(batch)), actions)
        obs, _, _, _ = vec_env.step(actions)
    return np.concatenate(collected)[:n]


def _check_request(metadata: Mapping[str, str], observations: np.ndarray, opset: int) -> None:
    if opset < MIN_OPSET:
        raise OnnxExportError(f"opset {opset} is below the minimum {MIN_OPSET}")
    if len(observations) == 0:
        raise OnnxExportError("no verification observations")
    reserved = sorted(set(metadata) & set(LIBRARY_METADATA_KEYS))
    if reserved:
        raise OnnxExportError(f"metadata keys {reserved} are set by the exporter")
    not_strings = sorted(key for key, value in metadata.items() if not isinstance(value, str))
    if not_strings:
        raise OnnxExportError(f"metadata values must be strings: {not_strings}")


def _write_temp_file(data: bytes, out_path: Path) -> Path:
    # Same directory as the target, so that os.replace is an atomic rename on one filesystem.
    fd, name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _compare_with_onnxruntime(
    onnx_path: Path,
    observations: np.ndarray,
    sb3_actions: np.ndarray,
    torch_values: np.ndarray,
    values_output: str,
    tolerance: float,
) -> ParityReport:
    onnx_outputs = OnnxPolicy(onnx_path, intra_op_threads=0).outputs(observations)
    actions_agree = onnx_outputs[ACTION_OUTPUT] == sb3_actions
    max_abs_diff = float(np.max(np.abs(onnx_outputs[values_output] - torch_values)))
    action_agreement = float(np.mean(actions_agree))
    return ParityReport(
        observations=len(observations),
        action_agreement=action_agreement,
        max_abs_diff=max_abs_diff,
        tolerance=tolerance,
        passed=action_agreement == 1.0 and max_abs_diff <= tolerance,
    )
