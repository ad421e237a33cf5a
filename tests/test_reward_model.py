"""The learned planner's reward model: its loss, its trainer, and the labels the algorithms give it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

import maze_env
from agents import building
from mazes.grid import generate_maze, open_directions, square_to_cell
from rl_maze.algorithms import REWARD_MODEL_LOSS_KEY, MazeDQN, MazePPO
from rl_maze.planner import MazePlannerExtractor
from rl_maze.reward_model import RewardModelTrainer, goal_reward_loss
from rl_maze.value_iteration import value_sources
from training.callbacks import SB3_METRICS


def learned_planner(size: int, seed: int = 0) -> MazePlannerExtractor:
    space = spaces.Box(0, 1, shape=(maze_env.N_OBS_CHANNELS, size, size), dtype=np.uint8)
    torch.manual_seed(seed)
    return MazePlannerExtractor(space, prior=False, learn_planner=True, agent_blind=True, reward_model=True)


def moves_next_to_the_goal(size: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Every move through an open passage from every cell of one maze, labelled as the env would: the moves
    into the goal cell end the episode there. Also the goal's flat cell index."""
    maze = generate_maze(size, 7)
    walls, goal = open_directions(maze), square_to_cell(maze.goal)
    env = maze_env.MazeEnv(maze_size=size)
    observations, actions, reached = [], [], []
    for row in range(size):
        for col in range(size):
            if (row, col) == goal:
                continue
            for action in range(4):
                if not walls[action][row, col]:
                    continue
                env.reset(options={"maze_seed": 7})
                env.agent_pos = (2 * row + 1, 2 * col + 1)
                before = env._observation()
                _, _, terminated, _, _ = env.step(action)
                observations.append(before)
                actions.append(action)
                reached.append(terminated)
    return (
        torch.as_tensor(np.stack(observations), dtype=torch.float32),
        torch.as_tensor(actions),
        torch.as_tensor(reached),
        goal[0] * size + goal[1],
    )


def test_fitting_the_reward_model_makes_the_goal_the_only_value_source() -> None:
    """From the env's own labels, the reward map learns where the goal reward is paid: after fitting, the
    goal is the source of every cell's value, so the planner's features point along shortest paths."""
    planner = learned_planner(5)
    observations, actions, reached, goal = moves_next_to_the_goal()
    assert 0 < int(reached.sum()) < len(reached)
    trainer = RewardModelTrainer.for_extractor(planner)
    assert trainer is not None
    losses = [trainer.step(observations, actions, reached) for _ in range(300)]
    assert losses[-1] is not None and losses[0] is not None and losses[-1] < 0.1 * losses[0]
    with torch.no_grad():
        values = planner.value_map(observations[:1])
        reward = planner.reward_map(observations[:1]).flatten(1)
    source, _ = value_sources(values, reward, planner._move_index(observations[:1, :4]), planner.cells)
    assert bool((source == goal).all()), source


def test_moves_into_walls_teach_the_reward_model_nothing() -> None:
    planner = learned_planner(5)
    observations, _, _, _ = moves_next_to_the_goal()
    closed = observations[:, :4].flatten(2)  # passage bits per direction
    agent = observations[:, maze_env.AGENT_CHANNEL].flatten(1).argmax(dim=1)
    blocked = [int(np.flatnonzero(closed[k, :, agent[k]].numpy() < 0.5)[0]) for k in range(2)]
    loss = goal_reward_loss(
        planner, observations[:2], torch.as_tensor(blocked), torch.ones(2, dtype=torch.bool)
    )
    assert loss is None


def test_only_a_learned_planner_with_a_reward_model_gets_a_trainer() -> None:
    space = spaces.Box(0, 1, shape=(maze_env.N_OBS_CHANNELS, 5, 5), dtype=np.uint8)
    assert RewardModelTrainer.for_extractor(MazePlannerExtractor(space)) is None  # the frozen prior
    frozen = MazePlannerExtractor(space, learn_planner=False, reward_model=True)
    assert RewardModelTrainer.for_extractor(frozen) is None
    assert RewardModelTrainer.for_extractor(torch.nn.Identity()) is None
    assert RewardModelTrainer.for_extractor(learned_planner(5)) is not None


@pytest.mark.parametrize("policy", ["planner", "planner_learned", "mlp"])
def test_ppo_labels_exactly_the_moves_that_ended_an_episode_at_the_goal(policy: str) -> None:
    """MazePPO reads the env's ``is_success`` per collected step: as many goal moves as solved episodes."""
    env = building.make_vec_env(3, "random", 0, 4)
    model = building.build_model("PPO", env, {"n_steps": 64}, 0, "cpu", 256, policy=policy)
    assert isinstance(model, MazePPO)
    assert (model._reward_model is not None) == (policy == "planner_learned")
    model.learn(256)
    if model._reward_model is not None:
        assert model.ep_success_buffer is not None
        solved = int(sum(model.ep_success_buffer))
        assert solved > 0, "a 3x3 maze is solved by chance within 256 steps"
        assert int(model._reached_goal.sum()) == solved


def test_dqn_with_a_learned_planner_trains_its_reward_model_from_replay() -> None:
    env = building.make_vec_env(3, "random", 0, 4)
    model = building.build_model("DQN", env, {"learning_starts": 64}, 0, "cpu", 256, policy="planner_learned")
    assert isinstance(model, MazeDQN) and model._reward_model is not None
    extractor = model.q_net.features_extractor
    assert isinstance(extractor, MazePlannerExtractor)
    before = extractor.goal_weight.detach().clone()
    model.learn(512)
    assert not torch.equal(extractor.goal_weight.detach(), before)


def test_rl_trains_the_step_cost_but_not_a_reward_model_s_map() -> None:
    """With a reward model, RL's gradient stops at the reward map (the reward model's alone) and still
    reaches the step cost, through every value's source; without one it reaches both."""
    observations, _, _, _ = moves_next_to_the_goal()
    for reward_model in (True, False):
        space = spaces.Box(0, 1, shape=(maze_env.N_OBS_CHANNELS, 5, 5), dtype=np.uint8)
        torch.manual_seed(0)
        planner = MazePlannerExtractor(space, prior=False, agent_blind=True, reward_model=reward_model)
        planner(observations).square().sum().backward()
        assert planner.raw_step_cost.grad is not None and float(planner.raw_step_cost.grad.abs()) > 0
        reward_grads = [parameter.grad for parameter in planner.reward_conv.parameters()]
        if reward_model:
            assert all(grad is None for grad in reward_grads)
        else:
            assert all(grad is not None for grad in reward_grads)


def test_the_reward_models_loss_is_logged_at_each_update() -> None:
    env = building.make_vec_env(3, "random", 0, 4)
    model = building.build_model("PPO", env, {"n_steps": 64}, 0, "cpu", 256, policy="planner_learned")
    assert isinstance(model, MazePPO)
    model.learn(256)
    model.train()  # one more update, whose values stay in the logger (learn() dumps and clears them)
    loss = model.logger.name_to_value[REWARD_MODEL_LOSS_KEY]
    assert 0 < loss < 10
    assert SB3_METRICS[REWARD_MODEL_LOSS_KEY] == "reward_model_loss"
