"""Agents: hyperparameter contract, vectorised evaluation, the planner extractor, and real learning."""

from __future__ import annotations

import time
import zlib
from collections import deque

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import DQN, PPO

import maze_env
from agents import building, evaluation, hyperparameters
from agents.rollouts import play_maze
from mazes.grid import generate_maze, shortest_path, shortest_path_moves
from rl_maze import planner

DELTAS = ((-1, 0), (0, 1), (1, 0), (0, -1))


def oracle_actions(batch: np.ndarray) -> np.ndarray:
    """Shortest-path actions computed from the observations alone (BFS from the goal over passage bits)."""
    actions = []
    for obs in batch:
        passages = obs[:4] > 0.5
        size = obs.shape[1]
        goal = tuple(int(v) for v in np.argwhere(obs[maze_env.GOAL_CHANNEL] > 0.5)[0])
        agent = tuple(int(v) for v in np.argwhere(obs[maze_env.AGENT_CHANNEL] > 0.5)[0])
        dist = np.full((size, size), -1)
        dist[goal] = 0
        queue = deque([goal])
        while queue:
            r, c = queue.popleft()
            for d, (dr, dc) in enumerate(DELTAS):
                if passages[d, r, c] and dist[r + dr, c + dc] < 0:
                    dist[r + dr, c + dc] = dist[r, c] + 1
                    queue.append((r + dr, c + dc))
        options = [
            (dist[agent[0] + dr, agent[1] + dc], d)
            for d, (dr, dc) in enumerate(DELTAS)
            if passages[d, agent[0], agent[1]]
        ]
        actions.append(min(options)[1])
    return np.array(actions)


def test_algorithms_and_defaults() -> None:
    assert hyperparameters.ALGORITHMS == ("PPO", "DQN")
    for algorithm in hyperparameters.ALGORITHMS:
        assert hyperparameters.default_n_envs(algorithm) >= 1
        params = hyperparameters.default_hyperparameters(algorithm, 10)
        assert params["policy_kwargs"]["features_extractor_class"] is planner.MazePlannerExtractor
    with pytest.raises(ValueError, match="algorithm"):
        hyperparameters.default_n_envs("A2C")


def test_build_model_merges_overrides_and_maps_episode_to_n_steps() -> None:
    env = building.make_vec_env(5, "fixed", 0, 4)
    ppo = building.build_model(
        "PPO", env, {"learning_rate": 1e-4}, seed=0, device="cpu", timesteps_per_episode=2048
    )
    assert isinstance(ppo, PPO)
    assert ppo.n_steps * env.num_envs == 2048
    assert ppo.learning_rate == 1e-4
    ppo = building.build_model("PPO", env, {"n_steps": 64}, seed=0, device="cpu", timesteps_per_episode=2048)
    assert isinstance(ppo, PPO) and ppo.n_steps == 64
    # A tiny iteration still builds: the minibatch shrinks to the rollout size.
    ppo = building.build_model("PPO", env, {}, seed=0, device="cpu", timesteps_per_episode=128)
    assert isinstance(ppo, PPO) and ppo.n_steps == 32 and ppo.batch_size == 128
    dqn = building.build_model(
        "DQN", env, {"buffer_size": 5000, "policy_kwargs": {"net_arch": []}}, 0, "cpu", 2048
    )
    assert isinstance(dqn, DQN) and dqn.buffer_size == 5000
    assert isinstance(dqn.q_net.features_extractor, planner.MazePlannerExtractor)
    used = hyperparameters.effective_hyperparameters(ppo, "PPO")
    assert used["n_steps"] == 32 and used["batch_size"] == 128 and used["n_envs"] == 4
    assert used["learning_rate"] == 1e-3 and used["policy"] == "ActorCriticPolicy"
    used = hyperparameters.effective_hyperparameters(dqn, "DQN")
    assert used["buffer_size"] == 5000 and used["train_freq"] == 1 and used["policy"] == "MazeDQNPolicy"


def test_ppo_rollout_follows_the_iteration_unless_given() -> None:
    assert hyperparameters.ppo_n_steps({}, n_envs=16, timesteps_per_episode=2048) == 128
    assert hyperparameters.ppo_n_steps({"n_steps": 64}, n_envs=16, timesteps_per_episode=2048) == 64
    # Fewer steps than envs still gives a rollout; the service rejects it (fewer than 2 steps per env).
    assert hyperparameters.ppo_n_steps({}, n_envs=16, timesteps_per_episode=8) == 1


def test_make_vec_env_seed_streams() -> None:
    random_env = building.make_vec_env(6, "random", 11, 4)
    random_env.reset()
    seeds = [maze.seed for maze in random_env.get_attr("maze")]
    assert len(set(seeds)) == 4, "each sub-env draws its own training mazes"
    assert all(not maze_env.is_eval_seed(s) for s in seeds)
    fixed_env = building.make_vec_env(6, "fixed", 11, 4)
    fixed_env.reset()
    assert {maze.seed for maze in fixed_env.get_attr("maze")} == {11}


def test_evaluate_with_oracle_and_stuck_policies() -> None:
    seeds = maze_env.eval_maze_seeds(20)
    perfect = evaluation.evaluate_with(oracle_actions, 7, seeds)
    assert perfect.success_rate == 1.0 and perfect.path_efficiency == pytest.approx(1.0)
    assert perfect.episodes == 20
    optimal = [shortest_path_moves(generate_maze(7, s)) for s in seeds]
    assert perfect.mean_steps == pytest.approx(np.mean(optimal))

    calls: list[int] = []

    def stuck(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        assert batch.dtype == np.float32 and batch.shape[1:] == (6, 7, 7)
        return np.zeros(len(batch), dtype=np.int64)  # always "up": stuck against a wall sooner or later

    failed = evaluation.evaluate_with(stuck, 7, seeds, max_steps=30)
    assert failed.success_rate == 0.0 and failed.path_efficiency == 0.0 and failed.mean_steps == 30
    # Lockstep: one batched call per time step, all mazes in the first call; an agent back on a square
    # (here: one bump) is known to fail, so no maze is played to its time limit.
    assert calls[0] == 20 and len(calls) < 30


def test_a_looping_policy_is_scored_as_if_it_played_to_its_time_limit() -> None:
    seeds = maze_env.eval_maze_seeds(40)
    calls: list[int] = []

    def wanderer(batch: np.ndarray) -> np.ndarray:
        """Deterministic: the shortest path on about half the mazes (told apart by their walls), a fixed
        pseudo-random move per observation on the others."""
        calls.append(len(batch))
        best = oracle_actions(batch)
        return np.array(
            [
                best[k] if zlib.crc32(obs[:4].tobytes()) % 2 else zlib.crc32(obs.tobytes()) % 4
                for k, obs in enumerate(batch)
            ],
            dtype=np.int64,
        )

    cut = evaluation.evaluate_with(wanderer, 5, seeds)
    cut_calls, calls[:] = len(calls), []
    envs = [maze_env.MazeEnv(maze_size=5, maze_mode="fixed") for _ in seeds]
    full = evaluation.play(wanderer, envs, seeds, record_positions=True)  # every episode to its end

    solved = [e.success for e in full]
    assert 0 < sum(solved) < len(seeds), "some mazes solved, some not: both cases are scored"
    assert cut.success_rate == pytest.approx(np.mean(solved))
    assert cut.mean_steps == pytest.approx(np.mean([e.steps for e in full]))
    optimal = [shortest_path_moves(e.maze) for e in full]
    efficiency = [o / e.steps if e.success else 0.0 for o, e in zip(optimal, full, strict=True)]
    assert cut.path_efficiency == pytest.approx(np.mean(efficiency))
    assert cut_calls < len(calls) / 2, (cut_calls, len(calls))


def test_play_maze_records_every_square_of_the_path() -> None:
    maze = generate_maze(7, 5)
    solved = play_maze(oracle_actions, 7, 5)
    assert solved.success and solved.path == shortest_path(maze)
    assert solved.steps == solved.shortest_path_steps == shortest_path_moves(maze)

    def stuck(batch: np.ndarray) -> np.ndarray:
        return np.zeros(len(batch), dtype=np.int64)  # "up" from the top-left start: into the outer wall

    bumped = play_maze(stuck, 7, 5, max_steps=10)
    assert not bumped.success and bumped.steps == 10 and bumped.path == [maze.start]


def test_evaluate_model_is_vectorised_and_fast() -> None:
    env = building.make_vec_env(10, "random", 0, 4)
    model = building.build_model("PPO", env, {}, seed=0, device="cpu", timesteps_per_episode=256)
    started = time.perf_counter()
    result = evaluation.evaluate(model, 10, maze_env.eval_maze_seeds(8), max_steps=40)
    assert time.perf_counter() - started < 20
    assert result.episodes == 8 and 0.0 <= result.path_efficiency <= result.success_rate <= 1.0


def test_planner_prior_points_along_shortest_paths_and_export_path_matches() -> None:
    env = maze_env.MazeEnv(maze_size=10, maze_mode="random", seed=4)
    assert isinstance(env.observation_space, spaces.Box)
    extractor = planner.MazePlannerExtractor(env.observation_space)
    observations = np.stack([env.reset()[0] for _ in range(32)]).astype(np.float32)
    with torch.no_grad():
        features = extractor(torch.from_numpy(observations)).numpy()
    best_by_planner = features[:, :4].argmax(axis=1)
    assert (best_by_planner == oracle_actions(observations)).all()
    original = planner._exporting
    try:
        planner._exporting = lambda: True  # the fixed-trip-count path that ONNX export traces
        with torch.no_grad():
            exported = extractor(torch.from_numpy(observations)).numpy()
    finally:
        planner._exporting = original
    assert np.array_equal(features, exported)


@pytest.mark.learning
def test_ppo_learns_fixed_small_maze() -> None:
    env = building.make_vec_env(5, "fixed", 3, hyperparameters.default_n_envs("PPO"))
    model = building.build_model("PPO", env, {}, seed=0, device="cpu", timesteps_per_episode=512)
    model.learn(4096)
    result = evaluation.evaluate(model, 5, [3])
    assert result.success_rate == 1.0 and result.path_efficiency == 1.0


@pytest.mark.learning
def test_ppo_generalises_to_unseen_small_mazes() -> None:
    seeds = maze_env.eval_maze_seeds(100)
    env = building.make_vec_env(5, "random", 0, hyperparameters.default_n_envs("PPO"))
    model = building.build_model("PPO", env, {}, seed=0, device="cpu", timesteps_per_episode=1024)
    before = evaluation.evaluate(model, 5, seeds)
    model.learn(16_384)
    after = evaluation.evaluate(model, 5, seeds)
    assert after.success_rate >= 0.9, (before, after)
    assert after.success_rate >= before.success_rate + 0.3, (before, after)
    assert after.path_efficiency >= 0.85


@pytest.mark.learning
def test_dqn_learns_fixed_small_maze() -> None:
    env = building.make_vec_env(5, "fixed", 3, hyperparameters.default_n_envs("DQN"))
    model = building.build_model(
        "DQN", env, {"learning_starts": 500}, seed=0, device="cpu", timesteps_per_episode=512
    )
    model.learn(4000)
    result = evaluation.evaluate(model, 5, [3])
    assert result.success_rate == 1.0 and result.path_efficiency == 1.0


@pytest.mark.learning
@pytest.mark.parametrize(("algorithm", "steps", "margin"), [("PPO", 49_152, 0.8), ("DQN", 16_384, 0.8)])
def test_planner_learned_learns_to_plan_from_reward_alone(algorithm: str, steps: int, margin: float) -> None:
    """No hand-set prior: the untrained planner solves none of the unseen 5x5 mazes; RL (with the planner's
    reward model) must learn it.

    Measured (seed 0): PPO 0% untrained, 14% after 4k steps, 43% after 32k, 100% after 49k (seeds 1 and 2:
    100% after 49k); DQN 0% untrained and after 8k, 100% after 16k (seed 1: 100% after 8k; seed 2: still 0%
    after 16k, so one short run proves little: the learning claims are the benchmark's, bench/RESULTS.md).
    """
    torch.set_num_threads(1)
    seeds = maze_env.eval_maze_seeds(100)
    env = building.make_vec_env(5, "random", 0, hyperparameters.default_n_envs(algorithm))
    model = building.build_model(
        algorithm, env, {}, seed=0, device="cpu", timesteps_per_episode=1024, policy="planner_learned"
    )
    before = evaluation.evaluate(model, 5, seeds)
    model.learn(steps)
    after = evaluation.evaluate(model, 5, seeds)
    assert after.success_rate >= before.success_rate + margin, (before, after)
