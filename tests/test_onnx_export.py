"""ONNX export of trained maze policies: verified parity, atomic publication, and torch-free replay."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import gymnasium
import numpy as np
import onnx
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

import maze_env
from agents import building, evaluation, onnx_graph
from agents.onnx_policy import LIBRARY_METADATA_KEYS, OnnxPolicy
from mazes.grid import generate_maze
from onnx_export import (
    OnnxExportError,
    collect_observations,
    export_policy,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MAZE_SIZE = 4
MAZE_SEED = 7
VERIFICATION_OBSERVATIONS = 1_200
# Plain MLP PPO on this 4x4 maze solved it after ~11k steps when measured; this leaves a wide margin.
MAX_SOLVE_TIMESTEPS = 60_000


def maze_metadata(algorithm: str) -> dict[str, str]:
    return {
        "algorithm": algorithm,
        "maze_size": str(MAZE_SIZE),
        "maze_mode": "fixed",
        "maze_seed": str(MAZE_SEED),
        "observation_encoding": maze_env.OBSERVATION_ENCODING,
        "action_meanings": ",".join(maze_env.ACTIONS),
        "experiment_id": "test-onnx-export",
    }


def solves_maze(model: BaseAlgorithm) -> bool:
    env = maze_env.MazeEnv(maze_size=MAZE_SIZE, maze_mode="fixed", seed=MAZE_SEED)
    obs, _ = env.reset()
    while True:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(int(action))
        if terminated or truncated:
            return bool(info["is_success"])


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # The CI machine has 2 shared cores; tiny networks train faster on one thread anyway.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def maze_vec_env() -> VecEnv:
    return building.make_vec_env(MAZE_SIZE, "fixed", MAZE_SEED, n_envs=4)


@pytest.fixture(scope="module", params=["PPO", "DQN"])
def service_model(request: pytest.FixtureRequest, maze_vec_env: VecEnv) -> PPO | DQN:
    """The service's default network for each algorithm, after a short real training."""
    model = building.build_model(
        request.param, maze_vec_env, {}, seed=0, device="cpu", timesteps_per_episode=256
    )
    assert isinstance(model, PPO | DQN)
    model.learn(1_500)
    return model


def algorithm_of(model: PPO | DQN) -> str:
    """The algorithm's name (the service's classes are subclasses, MazePPO and MazeDQN)."""
    return "PPO" if isinstance(model, PPO) else "DQN"


@pytest.fixture(scope="module")
def observations(service_model: PPO | DQN, maze_vec_env: VecEnv) -> np.ndarray:
    return collect_observations(service_model, maze_vec_env, VERIFICATION_OBSERVATIONS, seed=1)


@pytest.fixture(scope="module")
def exported(
    service_model: PPO | DQN, observations: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    algorithm = algorithm_of(service_model)
    out_path = tmp_path_factory.mktemp("export") / f"{algorithm}.onnx"
    export_policy(service_model, out_path, maze_metadata(algorithm), observations)
    return out_path


@pytest.fixture(scope="module")
def solved_maze_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain MLP PPO trained on the fixed maze until its deterministic policy solves it, exported."""
    env = DummyVecEnv([lambda: maze_env.MazeEnv(maze_size=MAZE_SIZE, maze_mode="fixed", seed=MAZE_SEED)] * 4)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=4, seed=0, device="cpu")
    model.set_logger(building.in_memory_logger())  # a plain SB3 model, not from build_model
    while not solves_maze(model):
        assert model.num_timesteps < MAX_SOLVE_TIMESTEPS, "PPO did not learn the fixed maze"
        model.learn(2_048, reset_num_timesteps=False)
    out_path = tmp_path_factory.mktemp("solved") / "ppo_solved.onnx"
    export_policy(model, out_path, maze_metadata("PPO"), collect_observations(model, env, 1_000))
    return out_path


def test_collected_observations_are_real_env_states(observations: np.ndarray) -> None:
    assert observations.shape == (VERIFICATION_OBSERVATIONS, maze_env.N_OBS_CHANNELS, MAZE_SIZE, MAZE_SIZE)
    assert observations.dtype == np.uint8
    agent_cells = observations[:, maze_env.AGENT_CHANNEL].reshape(len(observations), -1).argmax(axis=1)
    assert (observations[:, maze_env.AGENT_CHANNEL].sum(axis=(1, 2)) == 1).all()
    # Random actions mixed in take the agent off the greedy path.
    assert len(np.unique(agent_cells)) >= MAZE_SIZE


def test_export_is_verified_against_pytorch(
    service_model: PPO | DQN, observations: np.ndarray, tmp_path: Path
) -> None:
    out_path = tmp_path / "policy.onnx"

    algorithm = algorithm_of(service_model)
    report = export_policy(service_model, out_path, maze_metadata(algorithm), observations)

    values_output = "logits" if isinstance(service_model, PPO) else "q_values"
    assert report.path == out_path and out_path.is_file()
    assert report.size_bytes == out_path.stat().st_size
    assert report.opset == 17
    assert report.outputs == ("action", values_output)
    assert report.parity.observations == VERIFICATION_OBSERVATIONS
    assert report.parity.action_agreement == 1.0
    assert report.parity.max_abs_diff <= report.parity.tolerance == 1e-4
    assert report.parity.passed
    assert report.export_seconds > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.onnx"]


def test_metadata_holds_caller_and_library_keys(service_model: PPO | DQN, exported: Path) -> None:
    algorithm = algorithm_of(service_model)

    metadata = OnnxPolicy(exported).metadata

    assert maze_metadata(algorithm).items() <= metadata.items()
    assert set(LIBRARY_METADATA_KEYS) <= metadata.keys()
    assert metadata["torch_version"] == torch.__version__
    assert metadata["onnx_opset"] == "17"
    assert metadata["onnx_outputs"] == f"action,{'logits' if algorithm == 'PPO' else 'q_values'}"
    opset_imports = {entry.domain: entry.version for entry in onnx.load(exported).opset_import}
    assert opset_imports[""] == 17


@pytest.mark.parametrize("batch", [1, 64])
def test_any_batch_size_gives_sb3_actions(
    service_model: PPO | DQN, observations: np.ndarray, exported: Path, batch: int
) -> None:
    policy = OnnxPolicy(exported)
    batch_observations = observations[-batch:]

    outputs = policy.outputs(batch_observations)

    expected, _ = service_model.predict(batch_observations, deterministic=True)
    assert outputs["action"].dtype == np.int64
    np.testing.assert_array_equal(policy.predict(batch_observations), expected)
    values = outputs["logits" if isinstance(service_model, PPO) else "q_values"]
    assert values.shape == (batch, len(maze_env.ACTIONS))


def test_failed_verification_publishes_nothing(
    service_model: PPO | DQN, observations: np.ndarray, tmp_path: Path
) -> None:
    out_path = tmp_path / "policy.onnx"

    with pytest.raises(OnnxExportError, match=r"^ONNX conversion failed: onnxruntime disagrees"):
        export_policy(service_model, out_path, {}, observations, tolerance=-1.0)

    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_the_previous_file(
    service_model: PPO | DQN, observations: np.ndarray, exported: Path, tmp_path: Path
) -> None:
    out_path = tmp_path / "policy.onnx"
    out_path.write_bytes(exported.read_bytes())

    with pytest.raises(OnnxExportError):
        export_policy(service_model, out_path, {}, observations, tolerance=-1.0)

    assert out_path.read_bytes() == exported.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["policy.onnx"]


def test_library_metadata_keys_are_reserved(
    service_model: PPO | DQN, observations: np.ndarray, tmp_path: Path
) -> None:
    with pytest.raises(OnnxExportError, match="set by the exporter"):
        export_policy(service_model, tmp_path / "p.onnx", {"torch_version": "1.0"}, observations)
    assert list(tmp_path.iterdir()) == []


class ImageEnv(gymnasium.Env[np.ndarray, np.int64]):
    """Channel-first uint8 pixels in 0..255: SB3 divides them by 255 inside the policy."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 255, shape=(3, 6, 6), dtype=np.uint8)
        self.action_space = spaces.Discrete(3)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict]:
        return (
            self.observation_space.sample(),
            float(action == 1),
            False,
            bool(self.np_random.random() < 0.1),
            {},
        )


@pytest.mark.parametrize("algorithm", [PPO, DQN])
def test_image_scaling_is_inside_the_graph(algorithm: type[PPO] | type[DQN], tmp_path: Path) -> None:
    env = DummyVecEnv([ImageEnv])
    model = algorithm("MlpPolicy", env, seed=0, device="cpu")
    observations = collect_observations(model, env, 1_000)

    report = export_policy(model, tmp_path / "image.onnx", {}, observations)

    assert report.parity.passed
    policy = OnnxPolicy(report.path)
    raw = np.stack([env.observation_space.sample() for _ in range(8)])
    np.testing.assert_array_equal(policy.predict(raw), model.predict(raw, deterministic=True)[0])


def run_replay(model_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agents.replay", str(model_path), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def imported_modules(importtime_stderr: str) -> set[str]:
    # -X importtime lines: "import time: self [us] | cumulative | imported package"
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


@pytest.mark.learning
def test_replay_solves_the_trained_maze_without_torch(solved_maze_policy: Path) -> None:
    result = run_replay(solved_maze_policy)

    assert result.returncode == 0, result.stdout + result.stderr
    maze = generate_maze(MAZE_SIZE, MAZE_SEED)
    assert f"path: [{maze.start}" in result.stdout
    assert f"{maze.goal}]" in result.stdout
    assert "reached goal: yes" in result.stdout
    modules = imported_modules(result.stderr)
    assert "onnxruntime" in modules
    assert not {m for m in modules if m.split(".")[0] in ("torch", "stable_baselines3")}


def test_replay_exits_1_when_the_policy_is_stuck(tmp_path: Path) -> None:
    env = DummyVecEnv([lambda: maze_env.MazeEnv(maze_size=MAZE_SIZE, maze_mode="fixed", seed=MAZE_SEED)])
    model = PPO("MlpPolicy", env, seed=0, device="cpu")
    with torch.no_grad():
        # Always "up": the start is the top-left cell, so the agent bumps the outer wall until time runs out.
        action_net = cast(torch.nn.Linear, model.policy.action_net)
        action_net.weight.zero_()
        action_net.bias.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))
    out_path = tmp_path / "stuck.onnx"
    export_policy(model, out_path, maze_metadata("PPO"), collect_observations(model, env, 1_000))

    result = run_replay(out_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "reached goal: no" in result.stdout
    assert f"steps: {maze_env.default_max_episode_steps(MAZE_SIZE)} " in result.stdout


@pytest.mark.learning
def test_replay_plays_another_maze_seed(solved_maze_policy: Path) -> None:
    result = run_replay(solved_maze_policy, "--maze-seed", "123")

    assert result.returncode in (0, 1), result.stderr
    assert "maze: size 4, seed 123" in result.stdout
    assert ("reached goal: yes" in result.stdout) == (result.returncode == 0)


@pytest.mark.learning
def test_service_evaluation_runs_the_onnx_policy(solved_maze_policy: Path) -> None:
    # evaluation.evaluate_with feeds float32 batches; OnnxPolicy casts them to the graph's uint8 input.
    result = evaluation.evaluate_with(OnnxPolicy(solved_maze_policy).predict, MAZE_SIZE, [MAZE_SEED])

    assert result.success_rate == 1.0


def test_unsupported_algorithm_is_an_export_error(maze_vec_env: VecEnv, tmp_path: Path) -> None:
    model = A2C("MlpPolicy", maze_vec_env, seed=0, device="cpu")
    observations = collect_observations(model, maze_vec_env, 8)

    with pytest.raises(OnnxExportError, match="only PPO and DQN are supported, got A2C"):
        export_policy(model, tmp_path / "a2c.onnx", {}, observations)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


class Miswired(torch.nn.Module):
    """Stands in for an exporter bug: a graph that is valid ONNX but not the trained policy."""

    def __init__(self, policy: torch.nn.Module, action_shift: int, values_shift: float) -> None:
        super().__init__()
        self.policy = policy
        self.action_shift = action_shift
        self.values_shift = values_shift

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        action, values = self.policy(observation)
        return (action + self.action_shift) % values.shape[1], values + self.values_shift


@pytest.mark.parametrize(
    ("action_shift", "values_shift", "reason"),
    [(1, 0.0, "action agreement 0.0000"), (0, 0.01, "action agreement 1.0000, max abs diff 0.01")],
)
def test_a_graph_unlike_the_policy_is_not_published(
    service_model: PPO | DQN,
    observations: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    action_shift: int,
    values_shift: float,
    reason: str,
) -> None:
    export_to_bytes = onnx_graph.export_to_bytes

    def export_miswired(module: torch.nn.Module, *args: Any) -> bytes:
        return export_to_bytes(Miswired(module, action_shift, values_shift), *args)

    monkeypatch.setattr(onnx_graph, "export_to_bytes", export_miswired)

    with pytest.raises(OnnxExportError, match=reason):
        export_policy(service_model, tmp_path / "policy.onnx", {}, observations)
    assert list(tmp_path.iterdir()) == []
