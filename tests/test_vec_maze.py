"""VecMazeEnv against the reference it replaces: DummyVecEnv over RLMaze-v0, replayed with the same seeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from agents import building
from agents.vec_maze import VecMazeEnv
from maze_env import ACTION_DELTAS, MazeEnv
from mazes import batch
from mazes.grid import (
    Maze,
    bfs_distances,
    cell_distances_to_goal,
    generate_maze,
    open_directions,
    square_to_cell,
)


def reference_vec_env(maze_size: int, maze_mode: str, seed: int, n_envs: int) -> DummyVecEnv:
    """``n_envs`` MazeEnv copies in a DummyVecEnv, seeded as ``make_vec_env`` always seeded them."""

    def factory(rank: int) -> Callable[[], gymnasium.Env]:
        env_seed = seed if maze_mode == "fixed" else seed + rank
        return lambda: MazeEnv(maze_size=maze_size, maze_mode=maze_mode, seed=env_seed)

    env = DummyVecEnv([factory(k) for k in range(n_envs)])
    env.seed(seed)
    return env


def assert_infos_equal(ours: list[dict[str, Any]], reference: list[dict[str, Any]]) -> None:
    assert len(ours) == len(reference)
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if key == "terminal_observation":
                np.testing.assert_array_equal(mine[key], value)
            else:
                assert mine[key] == value and type(mine[key]) is type(value), key


def replay(ours: VecEnv, reference: VecEnv, steps: int, action_seed: int) -> int:
    """Step both with the same random actions; return how many episodes ended."""
    np.testing.assert_array_equal(ours.reset(), reference.reset())
    assert_infos_equal(ours.reset_infos, reference.reset_infos)
    actions = np.random.default_rng(action_seed)
    episodes = 0
    for _ in range(steps):
        action = actions.integers(0, 4, size=ours.num_envs)
        obs, rewards, dones, infos = ours.step(action)
        ref_obs, ref_rewards, ref_dones, ref_infos = reference.step(action)
        np.testing.assert_array_equal(obs, ref_obs)
        assert rewards.dtype == ref_rewards.dtype and dones.dtype == ref_dones.dtype
        np.testing.assert_array_equal(rewards, ref_rewards)
        np.testing.assert_array_equal(dones, ref_dones)
        assert_infos_equal(infos, ref_infos)
        episodes += int(dones.sum())
    return episodes


@pytest.mark.parametrize("maze_mode", ["random", "fixed"])
@pytest.mark.parametrize("maze_size", [2, 5, 10])
def test_same_seeds_same_episodes_as_dummy_vec_env(maze_size: int, maze_mode: str) -> None:
    n_envs, seed = 6, 17
    ours = VecMazeEnv(maze_size, maze_mode, seed, n_envs)
    ours.seed(seed)
    # Long enough for several episodes per env (time limit 2*N*N); at size 2 random moves also succeed.
    steps = 3 * 2 * maze_size * maze_size + 10
    reference = reference_vec_env(maze_size, maze_mode, seed, n_envs)
    episodes = replay(ours, reference, steps, action_seed=maze_size)
    assert episodes >= 2 * n_envs
    assert [m.seed for m in ours.get_attr("maze")] == [m.seed for m in reference.get_attr("maze")]


def test_agent_that_follows_the_shortest_path_succeeds_like_the_reference() -> None:
    """Successes (not only time-outs) must match too: an oracle walks both to the goal."""
    ours, reference = VecMazeEnv(6, "random", 3, 4), reference_vec_env(6, "random", 3, 4)
    ours.seed(3)
    obs, ref_obs = ours.reset(), reference.reset()
    successes = 0
    for _ in range(200):
        mazes = ours.get_attr("maze")
        assert [m.seed for m in mazes] == [m.seed for m in reference.get_attr("maze")]
        action = np.array(
            [oracle_action(m, pos) for m, pos in zip(mazes, ours.get_attr("agent_pos"), strict=True)]
        )
        obs, rewards, dones, infos = ours.step(action)
        ref_obs, ref_rewards, ref_dones, ref_infos = reference.step(action)
        np.testing.assert_array_equal(obs, ref_obs)
        np.testing.assert_array_equal(rewards, ref_rewards)
        np.testing.assert_array_equal(dones, ref_dones)
        assert_infos_equal(infos, ref_infos)
        successes += sum(bool(info.get("is_success")) for info in infos)
    assert successes >= 20


def oracle_action(maze: Maze, agent_pos: tuple[int, int]) -> int:
    dist, walls = cell_distances_to_goal(maze), open_directions(maze)
    row, col = square_to_cell(agent_pos)
    for action, (dr, dc) in enumerate(ACTION_DELTAS):
        if walls[action, row, col] and dist[row + dr, col + dc] == dist[row, col] - 1:
            return action
    raise AssertionError("no downhill move")


def test_forced_maze_seed_option_and_reseeding_match_the_reference() -> None:
    ours, reference = VecMazeEnv(5, "fixed", 4, 3), reference_vec_env(5, "fixed", 4, 3)
    ours.seed(4)
    ours.set_options({"maze_seed": 2**30 + 5})
    reference.set_options({"maze_seed": 2**30 + 5})
    assert replay(ours, reference, 120, action_seed=1) >= 3
    for env in (ours, reference):
        env.seed(99)
    assert replay(ours, reference, 60, action_seed=2) >= 3


def test_make_vec_env_builds_the_batched_env() -> None:
    env = building.make_vec_env(5, "random", 0, 3)
    assert isinstance(env, VecMazeEnv)
    with pytest.raises(ValueError, match="n_envs"):
        building.make_vec_env(5, "random", 0, 0)


@pytest.mark.parametrize("maze_size", [2, 3, 10, 30])
def test_cell_distances_equal_the_square_bfs(maze_size: int) -> None:
    for seed in range(20):
        maze = generate_maze(maze_size, seed)
        expected = bfs_distances(maze.grid, maze.goal)[1::2, 1::2] // 2
        np.testing.assert_array_equal(cell_distances_to_goal(maze), expected)


def test_many_envs_timing_out_together_match_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Envs whose shared time-limit resets generate their mazes as one numpy batch (``mazes.batch``)."""
    monkeypatch.setattr(batch, "BATCH_MIN_MAZES", 16)  # 48 envs stand for the benchmark's 1,024
    n_envs, seed = 48, 23
    ours = VecMazeEnv(4, "random", seed, n_envs)
    ours.seed(seed)
    reference = reference_vec_env(4, "random", seed, n_envs)
    # Time limit 32: most envs time out on the same step, three times over.
    assert replay(ours, reference, 100, action_seed=7) >= 2 * n_envs
    assert [m.seed for m in ours.get_attr("maze")] == [m.seed for m in reference.get_attr("maze")]


def test_a_numpy_integer_seed_is_reported_as_a_plain_int() -> None:
    env = VecMazeEnv(3, "fixed", np.int64(7), 2)  # type: ignore[arg-type]  # as numpy code passes it
    env.reset()
    env.step_async(np.array([1, 2]))
    _, _, _, infos = env.step_wait()
    assert all(type(info["maze_seed"]) is int and info["maze_seed"] == 7 for info in infos)
