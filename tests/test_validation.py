"""Bad input gets a 422 naming the field and the reason, or a 404 for an unknown run; never a 500."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.schemas.common import MAX_N_ENVS
from mazes.grid import MAX_MAZE_SIZE, MIN_MAZE_SIZE

SEED_BODY: dict[str, Any] = {
    "algorithm": "PPO",
    "total_episodes": 1000,
    "timesteps_per_episode": 2048,
    "maze_size": 10,
}


@pytest.fixture(scope="module")
def client(module_client: TestClient) -> TestClient:
    """One app answers every check here: none of them changes what another one sees."""
    return module_client


def field_errors(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {".".join(str(p) for p in item["loc"][1:]): item["msg"] for item in response.json()["detail"]}


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"algorithm": "A2C"}, "algorithm", "'PPO' or 'DQN'"),
        ({"algorithm": None}, "algorithm", "'PPO' or 'DQN'"),
        ({"total_episodes": 0}, "total_episodes", "greater than or equal to 1"),
        ({"total_episodes": -5}, "total_episodes", "greater than or equal to 1"),
        ({"total_episodes": "many"}, "total_episodes", "valid integer"),
        ({"timesteps_per_episode": 0}, "timesteps_per_episode", "greater than or equal to 1"),
        ({"timesteps_per_episode": 10**9}, "timesteps_per_episode", "less than or equal to"),
        ({"maze_size": MAX_MAZE_SIZE + 1}, "maze_size", f"less than or equal to {MAX_MAZE_SIZE}"),
        ({"maze_size": MIN_MAZE_SIZE - 1}, "maze_size", f"greater than or equal to {MIN_MAZE_SIZE}"),
        ({"maze_size": 7.5}, "maze_size", "valid integer"),
        ({"maze_mode": "spiral"}, "maze_mode", "'random' or 'fixed'"),
        ({"device": "tpu"}, "device", "'auto', 'cpu' or 'cuda'"),
        ({"policy": "transformer"}, "policy", "'planner', 'planner_learned', 'cnn' or 'mlp'"),
        ({"policy": None}, "policy", "'planner', 'planner_learned', 'cnn' or 'mlp'"),
        ({"n_envs": 0}, "n_envs", "greater than or equal to 1"),
        ({"n_envs": MAX_N_ENVS + 1}, "n_envs", f"less than or equal to {MAX_N_ENVS}"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"hyperparameters": {"learnin_rate": 0.1}}, "hyperparameters", "learnin_rate: Extra inputs"),
        (
            {"hyperparameters": {"learning_rate": -1}},
            "hyperparameters",
            "learning_rate: Input should be greater",
        ),
        (
            {"hyperparameters": {"n_steps": "lots"}},
            "hyperparameters",
            "n_steps: Input should be a valid integer",
        ),
        ({"hyperparameters": {"buffer_size": 1000}}, "hyperparameters", "accepted for PPO"),
        ({"algorithm": "DQN", "hyperparameters": {"n_epochs": 3}}, "hyperparameters", "accepted for DQN"),
        ({"hyperparameters": [1, 2]}, "hyperparameters", "valid dictionary"),
    ],
)
def test_invalid_start_requests_name_the_field(
    client: TestClient, change: dict[str, Any], field: str, reason: str
) -> None:
    response = client.post("/training/start", json={**SEED_BODY, **change})

    errors = field_errors(response)
    assert field in errors, errors
    assert reason in errors[field], errors


@pytest.mark.parametrize("missing", ["algorithm", "total_episodes", "timesteps_per_episode", "maze_size"])
def test_each_seed_field_is_required(client: TestClient, missing: str) -> None:
    body = {k: v for k, v in SEED_BODY.items() if k != missing}

    assert field_errors(client.post("/training/start", json=body)) == {missing: "Field required"}


def test_budgets_beyond_the_server_limit_are_rejected(client: TestClient) -> None:
    body = {**SEED_BODY, "total_episodes": 1_000_000, "timesteps_per_episode": 1_000_000}

    errors = field_errors(client.post("/training/start", json=body))

    assert "exceeds this server's limit" in errors["total_episodes"]


def test_a_ppo_rollout_shorter_than_two_steps_per_env_is_rejected(client: TestClient) -> None:
    errors = field_errors(
        client.post("/training/start", json={**SEED_BODY, "timesteps_per_episode": 8, "n_envs": 8})
    )

    assert "at least 2 × n_envs (= 16)" in errors["timesteps_per_episode"]


def test_cuda_is_rejected_on_a_server_without_it(client: TestClient) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    errors = field_errors(client.post("/training/start", json={**SEED_BODY, "device": "cuda"}))

    assert "no usable CUDA device" in errors["device"]


def test_malformed_bodies_are_422(client: TestClient) -> None:
    response = client.post(
        "/training/start", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert client.post("/training/start", json=[1, 2, 3]).status_code == 422


@pytest.mark.training  # a real run: it needs an app of its own
def test_algorithm_names_are_case_insensitive(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    response = client.post(
        "/training/start",
        json={
            **SEED_BODY,
            "algorithm": "dqn",
            "total_episodes": 1,
            "timesteps_per_episode": 64,
            "maze_size": 5,
        },
    )
    assert response.status_code == 200
    run_id = response.json()["experiment_id"]
    assert client.get(f"/training/status/{run_id}").json()["algorithm"] == "DQN"
    client.post(f"/training/stop/{run_id}")


@pytest.mark.parametrize("path", ["/training/status/{}", "/training/stop/{}"])
def test_malformed_experiment_ids_are_422(client: TestClient, path: str) -> None:
    method = client.get if "status" in path else client.post

    response = method(path.format("not-a-uuid"))

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "experiment_id"]


@pytest.mark.parametrize("path", ["/training/status/{}", "/training/stop/{}"])
def test_unknown_experiment_ids_are_404(client: TestClient, path: str) -> None:
    run_id = uuid.uuid4()
    method = client.get if "status" in path else client.post

    response = method(path.format(run_id))

    assert response.status_code == 404
    assert response.json() == {"detail": f"no training run with experiment_id {run_id}"}


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/experiments/00000000-0000-4000-8000-000000000000", {"GET", "PATCH", "DELETE"}),
        ("/training/start", {"POST"}),
        ("/sweeps", {"GET", "POST"}),
    ],
)
def test_a_405_allows_every_method_of_the_path(client: TestClient, path: str, methods: set[str]) -> None:
    # Starlette names only the first route that matches the path; RFC 9110 wants all of them.
    response = client.request("PUT", path)
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == methods


def test_a_gpu_sized_request_of_thousands_of_mazes_is_valid() -> None:
    # The shape bench/bench_gpu_throughput.py measured on a GPU: 4,096 mazes per step, 32-step rollouts.
    from api.schemas.training import StartTrainingRequest

    request = StartTrainingRequest.model_validate(
        {
            "algorithm": "PPO",
            "total_episodes": 10,
            "timesteps_per_episode": 32 * 4096,
            "maze_size": 10,
            "n_envs": 4096,
            "device": "cuda",
            "hyperparameters": {"batch_size": 8192},
        }
    )
    assert request.n_envs == 4096


def test_a_minibatch_too_large_for_a_cpu_is_allowed_only_on_a_gpu() -> None:
    from agents.hyperparameters import MAX_BATCH_SIZE, MAX_GPU_BATCH_SIZE, budget_violation

    def check(batch_size: int, gpu: bool) -> str | None:
        # The fastest PPO shape measured on a GPU: 16,384 envs, 32-step rollouts.
        violation = budget_violation(
            "PPO", 10, 16_384, {"batch_size": batch_size}, 32 * 16_384, 10**7, gpu=gpu
        )
        return None if violation is None else violation.message

    assert check(MAX_BATCH_SIZE, gpu=False) is None
    assert check(MAX_BATCH_SIZE + 1, gpu=False) == (
        f"batch_size: batch_size = {MAX_BATCH_SIZE + 1} must be at most {MAX_BATCH_SIZE} "
        "(this service's cap on a CPU; maze 10)"
    )
    assert check(MAX_GPU_BATCH_SIZE, gpu=True) is None
    message = check(MAX_GPU_BATCH_SIZE + 1, gpu=True)
    assert message is not None and f"at most {MAX_GPU_BATCH_SIZE} (this service's cap on a GPU" in message


def test_a_cpu_server_refuses_a_gpu_sized_minibatch_naming_the_cap(client: TestClient) -> None:
    body = {
        "algorithm": "PPO",
        "total_episodes": 1,
        "timesteps_per_episode": 32 * 4096,
        "maze_size": 10,
        "n_envs": 4096,
        "hyperparameters": {"batch_size": 65_536},
    }
    response = client.post("/training/start", json=body)  # "device": "auto", and this server has no CUDA
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "hyperparameters.batch_size"]
    assert "this service's cap on a CPU" in error["msg"]
