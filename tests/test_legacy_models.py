"""Models saved before ``agents.py`` became the ``agents`` package still load, predict and train on."""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3 import DQN, PPO

import agents
from agents import building, evaluation
from rl_maze import planner

DATA = Path(__file__).parent / "data"
# How tests/data/README.md says the files were made.
MAZE_SIZE, MAZE_SEED, N_ENVS, SAVED_TIMESTEPS = 5, 3, 2, 256


def pickled_class_paths(model_zip: Path) -> bytes:
    """The raw pickles SB3 stored for the policy class and its kwargs, where class paths appear."""
    with zipfile.ZipFile(model_zip) as archive:
        data = json.loads(archive.read("data"))
    return b"".join(base64.b64decode(data[key][":serialized:"]) for key in ("policy_class", "policy_kwargs"))


@pytest.mark.parametrize(
    ("algorithm", "file_name"), [("PPO", "legacy_ppo_5x5.zip"), ("DQN", "legacy_dqn_5x5.zip")]
)
def test_a_model_saved_by_the_old_agents_module_loads_predicts_and_trains(
    algorithm: str, file_name: str
) -> None:
    model_zip = DATA / file_name
    # The file refers to the planner by its old path, so loading it exercises the legacy names.
    pickles = pickled_class_paths(model_zip)
    assert b"agents" in pickles and b"MazePlannerExtractor" in pickles
    assert b"agents.planner" not in pickles
    env = building.make_vec_env(MAZE_SIZE, "fixed", MAZE_SEED, N_ENVS)

    model = building.load_model(algorithm, model_zip, env, "cpu")

    assert model.num_timesteps == SAVED_TIMESTEPS
    if algorithm == "PPO":
        assert isinstance(model, PPO)
        assert isinstance(model.policy.features_extractor, planner.MazePlannerExtractor)
    else:
        assert isinstance(model, DQN)
        assert isinstance(model.policy, planner.MazeDQNPolicy)
        assert isinstance(model.q_net.features_extractor, planner.MazePlannerExtractor)
        assert isinstance(model.q_net.q_net[0], planner.ActionSharedQHead)
    # Saved before the agent-blind reward map: it keeps the reward map it was trained with.
    extractor = model.policy.features_extractor if isinstance(model, PPO) else model.q_net.features_extractor
    assert isinstance(extractor, planner.MazePlannerExtractor) and not extractor.agent_blind
    observations = env.reset()
    assert isinstance(observations, np.ndarray)
    actions, _ = model.predict(observations, deterministic=True)
    assert actions.shape == (N_ENVS,) and set(np.asarray(actions).tolist()) <= {0, 1, 2, 3}
    result = evaluation.evaluate(model, MAZE_SIZE, [MAZE_SEED], max_steps=20)
    assert result.episodes == 1 and 1 <= result.mean_steps <= 20
    # Resuming a run loads its model and goes on training it (one step per env is enough to prove it).
    model.learn(N_ENVS, reset_num_timesteps=False)
    assert model.num_timesteps > SAVED_TIMESTEPS


def test_the_legacy_names_are_the_planner_classes() -> None:
    assert agents.MazePlannerExtractor is planner.MazePlannerExtractor
    assert agents.MazeDQNPolicy is planner.MazeDQNPolicy
    assert agents.ActionSharedQHead is planner.ActionSharedQHead
    with pytest.raises(AttributeError):
        _ = agents.build_model  # only the legacy class names live there
