"""Turn an SB3 PPO/DQN policy into a checked ONNX graph, with torch's own values to verify it against.

The torch side of ``onnx_export.export_policy``: a CPU copy of the policy wrapped so that ``forward``
returns (action, logits or q-values), traced with the TorchScript exporter, stamped with metadata and
checked by ``onnx.checker``. torch and Stable-Baselines3 are imported inside the functions, so that
importing ``onnx_export`` (for its error and report types) stays cheap.
"""

from __future__ import annotations

import copy
import io
import threading
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from agents.onnx_policy import (
    ACTION_OUTPUT,
    DQN_VALUES_OUTPUT,
    INPUT_NAME,
    METADATA_ONNX_VERSION,
    METADATA_OPSET,
    METADATA_OUTPUTS,
    METADATA_SB3_VERSION,
    METADATA_TORCH_VERSION,
    PPO_VALUES_OUTPUT,
)

if TYPE_CHECKING:
    import onnx
    import torch
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.policies import BasePolicy

# torch.onnx.export keeps process-wide state (torch.onnx's GLOBALS.in_onnx_export): two exports at once
# from two training threads fail with "GLOBALS.in_onnx_export must be False". One export at a time.
_TORCH_EXPORT_LOCK = threading.Lock()


class OnnxExportError(RuntimeError):
    """Export or verification failed; nothing was written at the output path."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"ONNX conversion failed: {reason}")
        self.reason = reason


class ExportablePolicy(NamedTuple):
    module: torch.nn.Module  # forward(observation) -> (action, values), what gets exported
    values_output: str  # "logits" or "q_values"
    policy: BasePolicy  # the CPU copy the module runs
    values_layer: torch.nn.Module  # the layer whose output is the values


def export_and_reference(
    model: PPO | DQN,
    metadata: Mapping[str, str],
    observations: np.ndarray,
    opset: int,
    planner_tree: bool = True,
) -> tuple[onnx.ModelProto, str, np.ndarray, np.ndarray]:
    """The checked ONNX model, its values output name, and PyTorch's values and SB3's actions to match.

    :param planner_tree: a frozen planner's value map read off the maze's tree (False: the sweeps; see
        ``rl_maze.planner.MazePlannerExtractor.value_map``).
    """
    import torch  # deferred: agents.replay needs neither torch nor SB3

    from rl_maze.planner import MazePlannerExtractor

    exportable = exportable_policy(model)
    for module in exportable.module.modules():
        if isinstance(module, MazePlannerExtractor):
            module.tree_export = planner_tree
    outputs = (ACTION_OUTPUT, exportable.values_output)
    with torch.no_grad():
        onnx_bytes = export_to_bytes(exportable.module, observations, outputs, opset)
    model_proto = with_metadata(onnx_bytes, metadata, opset, outputs)
    check_onnx_model(model_proto)
    sb3_actions, torch_values = sb3_reference(exportable, observations)
    return model_proto, exportable.values_output, torch_values, sb3_actions


def uses_planner_tree(model: PPO | DQN) -> bool:
    """Whether the export reads a frozen planner's value map off the maze's tree (then it can fall back)."""
    from rl_maze.planner import MazePlannerExtractor

    return any(
        isinstance(module, MazePlannerExtractor) and module.values_are_goal_distances()
        for module in model.policy.modules()
    )


def exportable_policy(model: PPO | DQN) -> ExportablePolicy:
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

        return ExportablePolicy(PpoPolicy(), PPO_VALUES_OUTPUT, policy, actor_critic.action_net)

    q_net = cast(DQNPolicy, policy).q_net

    class DqnPolicy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_net = q_net

        def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            q_values = self.q_net(observation)
            return q_values.argmax(dim=1), q_values

    return ExportablePolicy(DqnPolicy(), DQN_VALUES_OUTPUT, policy, q_net)


def sb3_reference(exportable: ExportablePolicy, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def export_to_bytes(
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
        # The planner's tour tables (rl_maze.tree_distances) are constants of the maze size, meant as such.
        warnings.filterwarnings("ignore", message="torch.from_numpy results are registered as constants")
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


def with_metadata(
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


def check_onnx_model(model_proto: onnx.ModelProto) -> None:
    import onnx

    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxExportError(f"onnx.checker rejected the model: {exc}") from exc
