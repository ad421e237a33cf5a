"""The frozen planner's feature memo: the same features as planning, fewer plans, never stale."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import DQN, PPO

import maze_env
from agents import building
from mazes.grid import generate_maze, open_directions, square_to_cell
from rl_maze.feature_memo import FeatureMemo
from rl_maze.planner import MazePlannerExtractor
from tests.test_planner import maze_observations


def extractor(
    maze_size: int, *, frozen: bool, seed: int = 0, agent_blind: bool = False
) -> MazePlannerExtractor:
    torch.manual_seed(seed)
    space = spaces.Box(0, 1, shape=(maze_env.N_OBS_CHANNELS, maze_size, maze_size), dtype=np.uint8)
    return MazePlannerExtractor(space, learn_planner=not frozen, prior=True, agent_blind=agent_blind)


def every_position(maze_size: int, maze_seeds: list[int]) -> torch.Tensor:
    """Observations of each maze with the agent on each of its cells, maze after maze."""
    batch = []
    for seed in maze_seeds:
        maze = generate_maze(maze_size, seed)
        for row in range(maze_size):
            for col in range(maze_size):
                goal = square_to_cell(maze.goal)
                batch.append(maze_env.encode_observation(open_directions(maze), (row, col), goal))
    return torch.as_tensor(np.stack(batch), dtype=torch.float32)


class CountingPlans:
    """Wraps an extractor's ``plan`` (or ``value_map``) and counts the observations it was asked to plan."""

    def __init__(self, module: MazePlannerExtractor, method: str = "plan") -> None:
        self.planned = 0
        self._plan = getattr(module, method)
        setattr(module, method, self)

    def __call__(self, observations: torch.Tensor) -> torch.Tensor:
        self.planned += len(observations)
        return self._plan(observations)


def test_a_frozen_planner_gives_the_planned_features_and_plans_each_observation_once() -> None:
    module = extractor(7, frozen=True)
    observations = maze_observations(7, 24, seed=1)
    expected = module.plan(observations)
    counter = CountingPlans(module)

    first = module(observations)
    again = module(observations[torch.randperm(24)[:10]])  # a minibatch of seen observations
    mixed = module(torch.cat((observations[:4], maze_observations(7, 3, seed=2))))

    torch.testing.assert_close(first, expected, atol=1e-5, rtol=0)
    assert counter.planned == 24 + 3  # the minibatch planned nothing, the mixed batch only its 3 new ones
    torch.testing.assert_close(mixed[:4], expected[:4], atol=1e-5, rtol=0)
    assert again.shape == (10, 9) and len(module.memo) == 27


def test_changed_weights_are_never_answered_from_the_memo() -> None:
    module = extractor(6, frozen=True)
    observations = maze_observations(6, 8, seed=3)
    before = module(observations)
    with torch.no_grad():
        module.raw_step_cost.add_(0.7)  # what loading other weights would do

    after = module(observations)

    torch.testing.assert_close(after, module.plan(observations), atol=1e-5, rtol=0)
    assert not torch.allclose(after, before)


def test_what_the_memo_does_not_cover_is_planned_every_time() -> None:
    learned = extractor(6, frozen=False)
    observations = maze_observations(6, 5, seed=4)
    learned(observations)
    assert len(learned.memo) == 0  # weights that train are never memoised

    frozen = extractor(6, frozen=True)
    counter = CountingPlans(frozen)
    blurred = observations * 0.5  # not a 0/1 grid: no key for it
    frozen(blurred)
    frozen(blurred)
    assert counter.planned == 10 and len(frozen.memo) == 0


def test_a_full_memo_forgets_the_oldest_rows_and_still_answers_right() -> None:
    module = extractor(6, frozen=True)
    module.memo = FeatureMemo(9, capacity=4)
    observations = maze_observations(6, 7, seed=5)
    expected = module.plan(observations)

    for row in range(7):
        module(observations[row : row + 1])
    counter = CountingPlans(module)
    answer = module(observations[2:6])

    torch.testing.assert_close(answer, expected[2:6], atol=1e-5, rtol=0)
    assert len(module.memo) == 4 and counter.planned == 1  # rows 3-6 were kept, row 2 was forgotten
    torch.testing.assert_close(module(observations), expected, atol=1e-5, rtol=0)
    assert counter.planned == 1 + 7  # a batch larger than the memo is planned whole


def test_copies_start_empty_and_dqn_networks_share_one_memo() -> None:
    module = extractor(5, frozen=True)
    module(maze_observations(5, 6, seed=6))
    assert len(module.memo) == 6
    assert len(copy.deepcopy(module).memo) == 0 and len(pickle.loads(pickle.dumps(module.memo))) == 0

    env = building.make_vec_env(5, "random", 0, 2)
    dqn = building.build_model("DQN", env, {}, seed=0, device="cpu", timesteps_per_episode=64)
    assert isinstance(dqn, DQN)
    online = dqn.q_net.features_extractor
    target = dqn.q_net_target.features_extractor
    assert isinstance(online, MazePlannerExtractor) and online.memo is target.memo
    observations = maze_observations(5, 4, seed=7)
    torch.testing.assert_close(dqn.q_net_target(observations), dqn.q_net(observations))


@pytest.mark.training  # trains in-process (a few seconds)
def test_ppo_epochs_plan_nothing_that_the_rollout_did_not() -> None:
    env = building.make_vec_env(5, "random", 0, 4)
    ppo = building.build_model("PPO", env, {"batch_size": 64}, 0, "cpu", timesteps_per_episode=128)
    assert isinstance(ppo, PPO)
    ppo.learn(128)  # one rollout of 4 x 32 observations and the update over it
    planner = ppo.policy.features_extractor
    assert isinstance(planner, MazePlannerExtractor) and len(planner.memo) > 0
    counter = CountingPlans(planner)

    ppo.train()  # the update's epochs over the same rollout again

    assert counter.planned == 0


@pytest.mark.training  # trains in-process (a few seconds)
def test_a_soft_target_update_neither_mixes_nor_thrashes_the_shared_memo() -> None:
    env = building.make_vec_env(5, "random", 0, 4)
    overrides = {"tau": 0.005, "target_update_interval": 50, "learning_starts": 100}
    dqn = building.build_model("DQN", env, overrides, 0, "cpu", timesteps_per_episode=64)
    assert isinstance(dqn, DQN)
    dqn.learn(600)  # several soft updates: the target's frozen planner is now a few bits off the online's
    online, target = dqn.q_net.features_extractor, dqn.q_net_target.features_extractor
    assert isinstance(online, MazePlannerExtractor) and isinstance(target, MazePlannerExtractor)
    observations = maze_observations(5, 16, seed=8)
    for module in (online, target, online, target):
        torch.testing.assert_close(module(observations), module.plan(observations), atol=1e-5, rtol=0)
    plans = CountingPlans(online), CountingPlans(target)

    online(observations), target(observations)

    assert [counter.planned for counter in plans] == [0, 0]  # both weight sets kept side by side


def test_replaced_parameters_and_other_dtypes_are_never_answered_from_the_memo() -> None:
    module = extractor(6, frozen=True)
    observations = maze_observations(6, 8, seed=9)
    module(observations)
    moved = {name: value + 0.3 for name, value in module.state_dict().items()}
    module.load_state_dict(moved, assign=True)  # new Parameter objects, not an in-place copy
    module.requires_grad_(False)
    torch.testing.assert_close(module(observations), module.plan(observations), atol=1e-5, rtol=0)

    double = module.double()
    features = double(observations.double())
    assert features.dtype == torch.float64
    torch.testing.assert_close(features, double.plan(observations.double()))


def test_an_agent_blind_planner_plans_each_maze_once_and_reads_every_position_from_it() -> None:
    module = extractor(8, frozen=True, agent_blind=True, seed=3)
    observations = every_position(8, [11, 12, 13])  # 3 mazes x 64 positions
    expected = module.plan(observations)
    value_map = module.value_map
    counter = CountingPlans(module, "value_map")

    features = module(observations)
    again = module(observations[torch.randperm(len(observations))[:50]])

    torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)
    assert counter.planned == 3 and len(module.memo) == 3  # one value map per maze, none for the minibatch
    assert again.shape == (50, 9)
    # The agent does not move the values: one maze's map is the same wherever the agent stands.
    maps = value_map(observations).reshape(3, 64, 64)
    torch.testing.assert_close(maps, maps[:, :1].expand_as(maps), atol=0, rtol=0)


def test_a_planner_that_sees_the_agent_plans_every_position() -> None:
    module = extractor(8, frozen=True, agent_blind=False, seed=3)
    observations = every_position(8, [11])
    counter = CountingPlans(module)
    module(observations)
    assert counter.planned == 64 and len(module.memo) == 64
    maps = module.value_map(observations)
    assert not torch.equal(maps, maps[:1].expand_as(maps))  # its reward map sees the agent's cell
