"""The policy choice of a run: each network is what it says, is recorded, shown and exported with parity."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from alembic import command
from sqlalchemy import text
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.torch_layers import FlattenExtractor

from agents import building, policies
from agents.onnx_policy import OnnxPolicy
from core.settings import Settings
from onnx_export import collect_observations, export_policy
from records.database import alembic_config, create_db_engine, make_session_factory, upgrade_schema
from records.store import RunStore
from records.tables import run_policy
from records.views import experiment_summary, training_status
from rl_maze.planner import MazePlannerExtractor
from tests.conftest import SMALL_RUN, settings_for_tests
from training.job import JobControl, TrainingJob
from training.run_metadata import onnx_metadata, run_parameters

ALGORITHMS = ("PPO", "DQN")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def extractor_of(model: BaseAlgorithm) -> torch.nn.Module:
    if isinstance(model, DQN):
        return model.q_net.features_extractor
    assert isinstance(model, PPO)
    return model.policy.features_extractor


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_policy_builds_the_network_it_names(algorithm: str) -> None:
    env = building.make_vec_env(5, "random", 0, 2)
    built = {
        policy: building.build_model(algorithm, env, {}, 0, "cpu", 256, policy=policy)
        for policy in policies.POLICIES
    }
    planner = extractor_of(built["planner"])
    assert isinstance(planner, MazePlannerExtractor)
    # The prior: goal cell as the value source, step cost 1, kept as set (only the heads learn).
    assert float(planner.goal_weight) == 8.0
    assert not any(p.requires_grad for p in planner.parameters())
    assert planner.agent_blind  # one value map per maze
    assert not planner.reward_model
    learned = extractor_of(built["planner_learned"])
    assert isinstance(learned, MazePlannerExtractor)
    assert abs(float(learned.goal_weight)) < 0.5, "no hand-set goal weight"
    assert all(p.requires_grad for p in learned.parameters()), "all of the planner is trained"
    assert learned.agent_blind and learned.reward_model
    # A nearly flat random reward map (SB3's orthogonal re-initialisation of PPO's layers undone).
    observations = torch.as_tensor(env.reset(), dtype=torch.float32)
    with torch.no_grad():
        reward = learned.reward_map(observations).flatten(1)
    spread = reward.max(dim=1).values - reward.min(dim=1).values
    assert float(spread.max()) < 0.1 * learned.floor, spread
    assert isinstance(extractor_of(built["cnn"]), policies.MazeCNN)
    assert isinstance(extractor_of(built["mlp"]), FlattenExtractor)


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="policy must be one of"):
        policies.policy_kwargs("transformer", "PPO")


@pytest.mark.parametrize("policy", policies.POLICIES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_policy_exports_to_onnx_with_parity(algorithm: str, policy: str, tmp_path: Path) -> None:
    env = building.make_vec_env(4, "random", 3, 2)
    overrides = {"learning_starts": 64} if algorithm == "DQN" else {}
    model = building.build_model(algorithm, env, overrides, 0, "cpu", 128, policy=policy)
    assert isinstance(model, PPO | DQN)
    model.learn(256)  # weights moved off their initialisation
    observations = collect_observations(model, env, 1_000, seed=1)
    out_path = tmp_path / "policy.onnx"

    report = export_policy(model, out_path, {"policy": policy}, observations)

    assert report.parity.passed and report.parity.action_agreement == 1.0
    assert report.parity.max_abs_diff <= 1e-4
    assert OnnxPolicy(out_path).metadata["policy"] == policy


@pytest.mark.training
def test_a_run_trains_records_shows_and_exports_its_policy(
    job_settings: Settings, job_store: RunStore
) -> None:
    job_store.create(dataclasses.replace(SMALL_RUN, policy="cnn"))
    run = job_store.claim_next_queued("tests:1:policy", max_running=10)
    assert run is not None

    TrainingJob(job_settings, job_store, None, run, JobControl()).execute()

    record = job_store.get(run.id)
    assert record.status == "completed" and record.policy == "cnn"
    assert training_status(record, job_settings).policy == "cnn"
    assert experiment_summary(record, job_settings, None).policy == "cnn"  # the runs list, GET /experiments
    metadata = OnnxPolicy(job_settings.run_dir(run.id) / "model.onnx").metadata
    assert metadata["policy"] == "cnn"
    assert record.effective_hyperparameters is not None
    params = run_parameters(record, "cpu", record.effective_hyperparameters)
    assert params["policy"] == "cnn" and params["policy_class"] == "ActorCriticPolicy"


def test_runs_recorded_before_the_choice_read_as_planner(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    engine = create_db_engine(url)
    upgrade_schema(engine)
    store = RunStore(make_session_factory(engine))
    run_id = store.create(SMALL_RUN).id
    # Back to the schema before the choice existed, and up again: the old row has no policy.
    command.downgrade(alembic_config(url), "0004")
    with engine.connect() as connection:
        columns = [row[1] for row in connection.execute(text("PRAGMA table_info(training_runs)"))]
    assert "policy" not in columns
    upgrade_schema(engine)

    record = store.get(run_id)

    assert record.policy is None and run_policy(record) == "planner"
    assert training_status(record, settings_for_tests(tmp_path / "data")).policy == "planner"
    env = building.make_vec_env(SMALL_RUN.maze_size, "random", 0, 1)
    assert onnx_metadata(record, env)["policy"] == "planner"
    engine.dispose()
