"""Export trained PPO/DQN policies to ONNX, verified against the PyTorch policy before they are published.

The exported graph takes observations exactly as the environment produces them (input ``observation``,
dtype of the observation space, dynamic batch axis); SB3's preprocessing (float cast, image scaling,
one-hot of discrete spaces) is inside the graph. ``VecNormalize`` statistics are not: they live in the
environment wrapper, so a policy trained behind ``VecNormalize`` needs the same normalisation at
inference time. Likewise the input layout is the model's observation space: for channels-last images SB3
inserts ``VecTransposeImage`` outside the policy, so such a graph takes channels-first input (the maze
observations are channels-first already).

Outputs:
- ``action`` (int64, shape (batch,)): the deterministic action, as ``model.predict(obs, deterministic=True)``.
- ``logits`` (PPO, float32, (batch, n_actions)): unnormalised categorical logits (softmax: probabilities).
- ``q_values`` (DQN, float32, (batch, n_actions)): the online Q-network's values; the action is their argmax.

Metadata (ONNX ``metadata_props``, string to string): the caller's keys (the service passes the
``METADATA_*`` keys below) plus the library keys this module adds (``torch_version``,
``stable_baselines3_version``, ``onnx_version``, ``onnx_opset``, ``onnx_outputs``).

Only numpy and onnxruntime are imported at module level (torch and Stable-Baselines3 inside the functions
that need them): ``agents.replay`` reads the metadata keys from here where torch is not installed. The
runtime that plays an exported file is ``agents.onnx_policy.OnnxPolicy``.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from agents.onnx_policy import ACTION_OUTPUT, OnnxPolicy

if TYPE_CHECKING:
    import gymnasium
    import onnx
    import torch
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.policies import BasePolicy
    from stable_baselines3.common.vec_env import VecEnv

# Keys the service passes in `metadata`; agents.replay reads the maze ones to rebuild the maze.
METADATA_ALGORITHM = "algorithm"
METADATA_MAZE_SIZE = "maze_size"  # cells per side, e.g. "10"
METADATA_MAZE_MODE = "maze_mode"  # "fixed" or "random"
METADATA_MAZE_SEED = "maze_seed"  # the fixed maze's seed; absent for random mode (replay needs --maze-seed)
METADATA_OBSERVATION_ENCODING = "observation_encoding"
METADATA_ACTION_MEANINGS = "action_meanings"
METADATA_EXPERIMENT_ID = "experiment_id"

# Keys this module adds; a caller may not set them.
METADATA_TORCH_VERSION = "torch_version"
METADATA_SB3_VERSION = "stable_baselines3_version"
METADATA_ONNX_VERSION = "onnx_version"
METADATA_OPSET = "onnx_opset"
METADATA_OUTPUTS = "onnx_outputs"
LIBRARY_METADATA_KEYS = (
    METADATA_TORCH_VERSION,
    METADATA_SB3_VERSION,
    METADATA_ONNX_VERSION,
    METADATA_OPSET,
    METADATA_OUTPUTS,
)

INPUT_NAME = "observation"
PPO_VALUES_OUTPUT = "logits"
DQN_VALUES_OUTPUT = "q_values"
MIN_OPSET = 14  # SB3's documented export needs opset >= 14

# Random actions mixed into the model's own when collecting observations, so that the verification set
# covers states off the greedy path (a deterministic maze policy can loop between two squares forever).
RANDOM_ACTION_PROBABILITY = 0.5

# torch.onnx.export keeps process-wide state (torch.onnx's GLOBALS.in_onnx_export): two exports at once
# from two training threads fail with "GLOBALS.in_onnx_export must be False". One export at a time.
_TORCH_EXPORT_LOCK = threading.Lock()


class OnnxExportError(RuntimeError):
    """Export or verification failed; nothing was written at the output path."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"ONNX conversion failed: {reason}")
        self.reason = reason


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
    :return: what was written and how well it agreed with PyTorch
    :raises OnnxExportError: on any failure, with the reason; no file is left at ``out_path`` or beside it
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    _check_request(metadata, verification_observations, opset)
    try:
        model_proto, values_output, torch_values, sb3_actions = _export_and_reference(
            model, metadata, verification_observations, opset
        )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        temp_path = _write_temp_file(model_proto.SerializeToString(), out_path)
        try:
            parity = _compare_with_onnxruntime(
                temp_path, verification_observations, sb3_actions, torch_values, values_output, tolerance
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


class _ExportablePolicy(NamedTuple):
    module: torch.nn.Module  # forward(observation) -> (action, values), what gets exported
    values_output: str  # "logits" or "q_values"
    policy: BasePolicy  # the CPU copy the module runs
    values_layer: torch.nn.Module  # the layer whose output is the values


def _export_and_reference(
    model: PPO | DQN, metadata: Mapping[str, str], observations: np.ndarray, opset: int
) -> tuple[onnx.ModelProto, str, np.ndarray, np.ndarray]:
    """The checked ONNX model, its values output name, and PyTorch's values and SB3's actions to match."""
    import torch  # deferred: agents.replay needs neither torch nor SB3

    exportable = _exportable_policy(model)
    outputs = (ACTION_OUTPUT, exportable.values_output)
    with torch.no_grad():
        onnx_bytes = _export_to_bytes(exportable.module, observations, outputs, opset)
    model_proto = _with_metadata(onnx_bytes, metadata, opset, outputs)
    _check_onnx_model(model_proto)
    sb3_actions, torch_values = _sb3_reference(exportable, observations)
    return model_proto, exportable.values_output, torch_values, sb3_actions


def _exportable_policy(model: PPO | DQN) -> _ExportablePolicy:
    """A CPU copy of the policy, wrapped so that forward returns (action, logits or q-values)."""
    import torch
    from gymnasium import spaces
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
    from stable_baselines3.dqn.policies import DQNPolicy

    if not isinstance(model.action_space, spaces.Discrete):
        raise OnnxExportError(f"only discrete action spaces are supported, got {model.action_space}")
    if not isinstance(model.observation_space, spaces.Box | spaces.Discrete):
        raise OnnxExportError(
            f"only Box or Discrete observations are supported, got {model.observation_space}"
        )
    if not isinstance(model, PPO | DQN):
        raise OnnxExportError(f"only PPO and DQN are supported, got {type(model).__name__}")

    # A copy keeps the caller's model on its device and in its training mode.
    policy: BasePolicy = copy.deepcopy(model.policy).to("cpu")
    policy.set_training_mode(False)

    if isinstance(model, PPO):
        actor_critic = cast(ActorCriticPolicy, policy)

        class PpoPolicy(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.policy = actor_critic

            def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                # Same path as ActorCriticPolicy.get_distribution, stopping at the raw logits.
                features = BasePolicy.extract_features(
                    self.policy, observation, self.policy.pi_features_extractor
                )
                logits = self.policy.action_net(self.policy.mlp_extractor.forward_actor(features))
                return logits.argmax(dim=1), logits

        return _ExportablePolicy(PpoPolicy(), PPO_VALUES_OUTPUT, policy, actor_critic.action_net)

    q_net = cast(DQNPolicy, policy).q_net

    class DqnPolicy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_net = q_net

        def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            q_values = self.q_net(observation)
            return q_values.argmax(dim=1), q_values

    return _ExportablePolicy(DqnPolicy(), DQN_VALUES_OUTPUT, policy, q_net)


def _sb3_reference(exportable: _ExportablePolicy, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SB3's own deterministic actions, and the logits / q-values it computed for them.

    One pass through ``policy.predict`` with a hook on the values layer: the reference is SB3's code path
    (not our wrapper's), and large planner networks are not run twice over the verification set.
    """
    import torch

    captured: list[torch.Tensor] = []

    def capture(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        captured.append(output.detach())

    handle = exportable.values_layer.register_forward_hook(capture)
    try:
        actions, _ = exportable.policy.predict(observations, deterministic=True)
    finally:
        handle.remove()
    return np.asarray(actions).reshape(-1), torch.cat(captured).numpy()


def _export_to_bytes(
    module: torch.nn.Module, observations: np.ndarray, outputs: tuple[str, ...], opset: int
) -> bytes:
    import torch

    # Two example rows: with a batch of one the tracer may specialise shapes to 1.
    example = torch.as_tensor(observations[:2])
    buffer = io.BytesIO()
    with _TORCH_EXPORT_LOCK, warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose: torch's default (dynamo) needs onnxscript, which
        # the service does not ship, and does not accept dynamic_axes.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        # F.pad's padding prep cannot be folded into a constant; the graph is still correct (verified below).
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1 can be constant folded")
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file-like objects too
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *outputs)},
        )
    return buffer.getvalue()


def _with_metadata(
    onnx_bytes: bytes, metadata: Mapping[str, str], opset: int, outputs: tuple[str, ...]
) -> onnx.ModelProto:
    import onnx
    import stable_baselines3
    import torch

    model_proto = onnx.load_from_string(onnx_bytes)
    library_metadata = {
        METADATA_TORCH_VERSION: torch.__version__,
        METADATA_SB3_VERSION: stable_baselines3.__version__,
        METADATA_ONNX_VERSION: onnx.__version__,
        METADATA_OPSET: str(opset),
        METADATA_OUTPUTS: ",".join(outputs),
    }
    onnx.helper.set_model_props(model_proto, {**metadata, **library_metadata})
    return model_proto


def _check_onnx_model(model_proto: onnx.ModelProto) -> None:
    import onnx

    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxExportError(f"onnx.checker rejected the model: {exc}") from exc


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
