"""Run a policy exported by ``onnx_export.export_policy`` with onnxruntime on CPU (no torch needed).

Only numpy and onnxruntime are imported: ``python -m agents.replay`` and the API's rollouts and evaluation run
exported policies where torch and Stable-Baselines3 need not be installed.

The file's contract, which ``onnx_export`` writes and this module reads:

Outputs:
- ``action`` (int64, shape (batch,)): the deterministic action, as ``model.predict(obs, deterministic=True)``.
- ``logits`` (PPO, float32, (batch, n_actions)): unnormalised categorical logits (softmax: probabilities).
- ``q_values`` (DQN, float32, (batch, n_actions)): the online Q-network's values; the action is their argmax.

Metadata (ONNX ``metadata_props``, string to string): the caller's keys (the service passes the
``METADATA_*`` keys below) plus the library keys this module adds (``torch_version``,
``stable_baselines3_version``, ``onnx_version``, ``onnx_opset``, ``onnx_outputs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

# The graph output holding the deterministic action (int64, shape (batch,)); onnx_export writes it.
ACTION_OUTPUT = "action"
# Keys the service passes in `metadata`; agents.replay reads the maze ones to rebuild the maze.
METADATA_ALGORITHM = "algorithm"
METADATA_POLICY = "policy"  # the run's network: "planner", "planner_learned", "cnn" or "mlp"
METADATA_MAZE_SIZE = "maze_size"  # cells per side, e.g. "10"
METADATA_MAZE_MODE = "maze_mode"  # "fixed" or "random"
METADATA_MAZE_SEED = "maze_seed"  # the fixed maze's seed; absent for random mode (replay needs --maze-seed)
METADATA_OBSERVATION_ENCODING = "observation_encoding"
METADATA_ACTION_MEANINGS = "action_meanings"
METADATA_EXPERIMENT_ID = "experiment_id"

# Keys onnx_export adds; a caller may not set them.
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

_ORT_TO_NUMPY: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


class OnnxPolicy:
    """A policy exported by ``export_policy``, run with onnxruntime on CPU (no torch needed)."""

    def __init__(self, path: Path | str, intra_op_threads: int = 1) -> None:
        """
        :param path: the ``.onnx`` file
        :param intra_op_threads: onnxruntime threads per call; 1 is fastest for single observations and
            leaves the other cores to training
        """
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        self._input_dtype = _numpy_dtype(model_input.type)
        self._output_names = [output.name for output in self._session.get_outputs()]
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)

    def predict(self, observations: np.ndarray) -> np.ndarray:
        """
        :param observations: a batch of observations, shape (batch, *obs_shape)
        :return: the deterministic actions, int64, shape (batch,)
        """
        return np.asarray(self._session.run([ACTION_OUTPUT], self._feed(observations))[0])

    def outputs(self, observations: np.ndarray) -> dict[str, np.ndarray]:
        """
        :param observations: a batch of observations, shape (batch, *obs_shape)
        :return: every graph output by name (``action`` and ``logits`` or ``q_values``)
        """
        results = self._session.run(self._output_names, self._feed(observations))
        return {name: np.asarray(value) for name, value in zip(self._output_names, results, strict=True)}

    def _feed(self, observations: np.ndarray) -> dict[str, np.ndarray]:
        # A lossless cast for the maze's 0/1 observations, which agents.evaluation.play sends as float32.
        return {self._input_name: np.asarray(observations, dtype=self._input_dtype)}


def _numpy_dtype(ort_type: str) -> Any:
    if ort_type not in _ORT_TO_NUMPY:
        raise ValueError(f"unsupported ONNX input type {ort_type}")
    return _ORT_TO_NUMPY[ort_type]
