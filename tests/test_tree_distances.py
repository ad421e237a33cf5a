"""Goal distances read off a perfect maze's tree (rl_maze.tree_distances), and the ONNX graphs using them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import DQN, PPO

import maze_env
from agents import building
from agents.onnx_graph import export_to_bytes
from mazes.grid import cell_distances_to_goal, cell_to_square, generate_maze, open_directions
from onnx_export import collect_observations, export_policy
from rl_maze import planner as planner_module
from rl_maze.planner import MazePlannerExtractor
from rl_maze.tree_distances import goal_distances, jump_rounds, tour_tables
from tests.test_planner import maze_observations


@pytest.mark.parametrize("maze_size", [2, 3, 7, 30])
def test_tree_distances_equal_breadth_first_search_from_any_goal(maze_size: int) -> None:
    rng = np.random.default_rng(maze_size)
    mazes = []
    for seed in range(12):
        maze = generate_maze(maze_size, seed)
        # The goal anywhere, not only in the corner the service puts it.
        goal = (int(rng.integers(maze_size)), int(rng.integers(maze_size)))
        mazes.append(dataclasses.replace(maze, goal=cell_to_square(goal)))
    passages = torch.as_tensor(np.stack([open_directions(maze) for maze in mazes]), dtype=torch.float32)
    goals = torch.tensor([(maze.goal[0] // 2) * maze_size + maze.goal[1] // 2 for maze in mazes])
    next_candidates, reverse = tour_tables(maze_size)

    distances = goal_distances(passages, goals, next_candidates, reverse, jump_rounds(maze_size))

    expected = np.stack([cell_distances_to_goal(maze).reshape(-1) for maze in mazes])
    assert expected.max() > 0
    np.testing.assert_array_equal(distances.numpy(), expected)


@pytest.mark.parametrize("maze_size", [10, 30])
def test_a_frozen_planner_exports_without_sweeps_and_with_the_same_features(maze_size: int) -> None:
    torch.manual_seed(maze_size)
    space = spaces.Box(0, 1, shape=(maze_env.N_OBS_CHANNELS, maze_size, maze_size), dtype=np.uint8)
    planner = MazePlannerExtractor(space, learn_planner=False, agent_blind=True).eval()
    observations = maze_observations(maze_size, 64, seed=maze_size)
    with torch.no_grad():
        graph = onnx.load_from_string(export_to_bytes(planner, observations.numpy(), ("features",), 17))
        expected = planner.plan(observations)

    # No Loop: ~11 rounds of gathers at 30x30 (K = 271 sweeps otherwise), as few nodes at every size.
    assert not [node for node in graph.graph.node if node.op_type == "Loop"]
    assert len(graph.graph.node) < 250, len(graph.graph.node)
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (features,) = session.run(None, {session.get_inputs()[0].name: observations.numpy()})
    np.testing.assert_allclose(features, expected.numpy(), atol=1e-4, rtol=0)


def loop_nodes(path: Path) -> int:
    return sum(node.op_type == "Loop" for node in onnx.load(str(path)).graph.node)


def open_directions_of_an_open_grid(size: int) -> np.ndarray:
    """Passage bits of a size x size grid with no inner walls (every cell joined to its neighbours)."""
    passages = np.ones((4, size, size), dtype=np.uint8)
    passages[0, 0, :] = 0  # up, off the top row
    passages[1, :, -1] = 0  # right
    passages[2, -1, :] = 0  # down
    passages[3, :, 0] = 0  # left
    return passages


@pytest.mark.parametrize("algorithm", ["PPO", "DQN"])
def test_the_export_falls_back_to_the_sweeps_for_mazes_with_loops(algorithm: str, tmp_path: Path) -> None:
    # The default policy's planner is frozen: its graph reads the tree on perfect mazes...
    env = building.make_vec_env(5, "random", 3, 4)
    model = building.build_model(algorithm, env, {}, seed=3, device="cpu", timesteps_per_episode=64)
    assert isinstance(model, PPO | DQN)
    observations = collect_observations(model, env, 200)
    report = export_policy(model, tmp_path / "tree.onnx", {"algorithm": algorithm}, observations)
    assert report.parity.passed and loop_nodes(report.path) == 0

    # ...but a grid with every inner wall open has loops, and no tree to read: the tree graph disagrees
    # with the sweeps there, so the sweeps are what gets published, still verified.
    open_grid = observations.copy()
    open_grid[:, :4] = open_directions_of_an_open_grid(5)
    report = export_policy(model, tmp_path / "sweeps.onnx", {"algorithm": algorithm}, open_grid)
    assert report.parity.passed and report.parity.action_agreement == 1.0
    assert loop_nodes(report.path) >= 1


def test_an_export_whose_tree_graph_cannot_be_made_publishes_the_sweeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = building.make_vec_env(5, "random", 4, 4)
    model = building.build_model("PPO", env, {}, seed=4, device="cpu", timesteps_per_episode=64)
    assert isinstance(model, PPO)
    observations = collect_observations(model, env, 100)

    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("no tour here")

    monkeypatch.setattr(planner_module, "goal_distances", broken)
    report = export_policy(model, tmp_path / "policy.onnx", {"algorithm": "PPO"}, observations)

    assert report.parity.passed and loop_nodes(report.path) >= 1
