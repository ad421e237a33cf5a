"""Defects a review found at the edges: concurrent exports, non-finite numbers, huge offsets, big bodies."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

import maze_env
from onnx_export import collect_observations, export_policy
from tests.conftest import FINAL_STATES, LiveService, wait_for_status

VALID_START: dict[str, Any] = {
    "algorithm": "PPO",
    "total_episodes": 2,
    "timesteps_per_episode": 64,
    "maze_size": 6,
    "seed": 5,
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path) -> Iterator[LiveService]:
    """One real uvicorn for this module's connection-level tests (each start costs seconds)."""
    service = LiveService(
        tmp_path_factory.mktemp("reliability") / "data",
        env={"MAX_REQUEST_BYTES": "2048"},
        mlflow_store=mlflow_store_template,
    )
    try:
        yield service.start()
    finally:
        service.stop()


@pytest.fixture
def http(service: LiveService) -> Iterator[httpx.Client]:
    with service.client() as http:
        yield http


def local_port(response: httpx.Response) -> int:
    """The client-side port the response came over: the same port means the same connection."""
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def test_two_threads_export_at_once(tmp_path: Path) -> None:
    """torch's exporter keeps process-wide state: two exports at once must not break each other."""
    env = DummyVecEnv([lambda: maze_env.MazeEnv(maze_size=4, maze_mode="fixed", seed=7)])
    models = [PPO("MlpPolicy", env, n_steps=64, seed=seed, device="cpu") for seed in (1, 2)]
    observations = collect_observations(models[0], env, 64)
    exports_each = 3
    barrier = threading.Barrier(len(models))
    failures: list[BaseException] = []

    def export_repeatedly(index: int) -> None:
        barrier.wait()
        for attempt in range(exports_each):
            try:
                export_policy(models[index], tmp_path / f"{index}-{attempt}.onnx", {}, observations)
            except BaseException as error:
                failures.append(error)

    threads = [threading.Thread(target=export_repeatedly, args=(index,)) for index in range(len(models))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    assert failures == []
    assert len(list(tmp_path.glob("*.onnx"))) == len(models) * exports_each


@pytest.mark.training
def test_two_runs_finishing_together_both_export(make_client: Callable[..., TestClient]) -> None:
    client = make_client(executor="thread", max_concurrent_runs=2)
    run_ids = [client.post("/training/start", json=VALID_START).json()["experiment_id"] for _ in range(2)]

    finals = [wait_for_status(client.get, run_id, export_attempted) for run_id in run_ids]

    assert [final["status"] for final in finals] == ["completed", "completed"]
    assert [final["onnx"]["status"] for final in finals] == ["exported", "exported"], finals


def export_attempted(status: dict[str, Any]) -> bool:
    # A run is final before its ONNX export ends: the export follows the saved model.
    onnx = status["onnx"]
    return status["status"] in FINAL_STATES and (onnx is None or onnx["status"] != "pending")


def post_raw(client: httpx.Client, path: str, raw: str) -> httpx.Response:
    # httpx's json= refuses NaN and Infinity: send the bytes a non-Python client would.
    return client.post(path, content=raw.encode(), headers={"Content-Type": "application/json"})


def start_body(**raw_fields: str) -> str:
    """A valid start body with some fields replaced by raw JSON text (NaN, Infinity, true, "10"...)."""
    fields = {key: json.dumps(value) for key, value in VALID_START.items()}
    fields.update(raw_fields)
    return "{" + ", ".join(f'"{key}": {value}' for key, value in fields.items()) + "}"


def field_errors(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {".".join(str(p) for p in item["loc"][1:]): item["msg"] for item in response.json()["detail"]}


@pytest.mark.parametrize(
    ("raw_fields", "field", "reason"),
    [
        ({"maze_size": "NaN"}, "maze_size", "valid integer"),
        ({"maze_size": "Infinity"}, "maze_size", "valid integer"),
        ({"total_episodes": "-Infinity"}, "total_episodes", "valid integer"),
        ({"total_episodes": "true"}, "total_episodes", "valid integer"),
        ({"total_episodes": '"10"'}, "total_episodes", "valid integer"),
        ({"seed": "false"}, "seed", "valid integer"),
        ({"n_envs": '"4"'}, "n_envs", "valid integer"),
        (
            {"hyperparameters": '{"learning_rate": NaN}'},
            "hyperparameters",
            "learning_rate: Input should be a finite",
        ),
        ({"hyperparameters": '{"gamma": Infinity}'}, "hyperparameters", "gamma: Input should be a finite"),
        (
            {"hyperparameters": '{"target_kl": Infinity}'},
            "hyperparameters",
            "target_kl: Input should be a finite",
        ),
        (
            {"hyperparameters": '{"n_steps": true}'},
            "hyperparameters",
            "n_steps: Input should be a valid integer",
        ),
        (
            {"hyperparameters": '{"n_epochs": "3"}'},
            "hyperparameters",
            "n_epochs: Input should be a valid integer",
        ),
    ],
)
def test_non_finite_and_non_integer_numbers_get_422_naming_the_field(
    http: httpx.Client, raw_fields: dict[str, str], field: str, reason: str
) -> None:
    errors = field_errors(post_raw(http, "/training/start", start_body(**raw_fields)))

    assert field in errors, errors
    assert reason in errors[field], errors


@pytest.mark.parametrize(
    ("operation", "raw", "field"),
    [
        ("evaluate", '{"episodes": NaN}', "episodes"),
        ("evaluate", '{"episodes": Infinity}', "episodes"),
        ("evaluate", '{"episodes": true}', "episodes"),
        ("rollout", '{"maze_seed": -Infinity}', "maze_seed"),
        ("rollout", '{"maze_seed": "3"}', "maze_seed"),
    ],
)
def test_experiment_bodies_reject_non_finite_and_non_integer_numbers(
    http: httpx.Client, operation: str, raw: str, field: str
) -> None:
    response = post_raw(http, f"/experiments/{uuid.uuid4()}/{operation}", raw)

    assert field_errors(response) == {field: "Input should be a valid integer"}


def test_any_input_the_422_echoes_is_encoded(http: httpx.Client) -> None:
    """Bodies that are not JSON at all reach validation as bytes, which may not even be UTF-8."""
    response = http.post("/training/start", content=b"\xff\xfe{", headers={"Content-Type": "text/plain"})

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_a_nan_body_gets_422_and_keeps_the_connection(http: httpx.Client) -> None:
    first = http.get("/health")

    response = post_raw(http, "/training/start", start_body(maze_size="NaN"))

    assert field_errors(response) == {"maze_size": "Input should be a valid integer"}
    assert response.json()["detail"][0]["input"] == "nan"
    after = http.get("/health")
    assert after.status_code == 200
    assert local_port(first) == local_port(response) == local_port(after)


@pytest.mark.parametrize(
    "query",
    [
        "offset=100000000000000000000",
        "offset=-1",
        "limit=100000000000000000000",
        "limit=0",
    ],
)
def test_out_of_range_list_queries_get_422(http: httpx.Client, query: str) -> None:
    response = http.get(f"/experiments?{query}")

    field = query.split("=")[0]
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", field]


@pytest.mark.parametrize("wait_s", ["nan", "inf", "-1", "100000000000000000000"])
def test_out_of_range_stop_waits_get_422(http: httpx.Client, wait_s: str) -> None:
    response = http.post(f"/training/stop/{uuid.uuid4()}", params={"wait_s": wait_s})

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "wait_s"]


def test_a_huge_offset_past_the_runs_lists_nothing(http: httpx.Client) -> None:
    response = http.get("/experiments", params={"offset": 2**31 - 1})

    assert response.status_code == 200, response.text
    assert response.json()["items"] == []


def test_an_oversized_chunked_body_gets_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield start_body().encode()[:-1]
        for _ in range(8):
            yield b', "padding": "' + b"x" * 512 + b'"'
        yield b"}"

    response = http.post("/training/start", content=chunks(), headers={"Content-Type": "application/json"})

    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413, response.text
    assert response.json() == {"detail": "request body larger than 2048 bytes"}
    assert http.get("/health").status_code == 200


@pytest.mark.training
def test_a_small_chunked_body_is_accepted(http: httpx.Client) -> None:
    body = start_body(total_episodes="1").encode()
    response = http.post(
        "/training/start", content=iter([body[:10], body[10:]]), headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 200, response.text
    http.post(f"/training/stop/{response.json()['experiment_id']}")


def schema_keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from schema_keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from schema_keys(value)


def test_the_openapi_document_has_no_prefix_items(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()

    assert "prefixItems" not in set(schema_keys(document))
    square = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}
    rollout = document["components"]["schemas"]["RolloutResponse"]["properties"]
    assert square.items() <= rollout["start"].items()
    assert square.items() <= rollout["goal"].items()
    assert square.items() <= rollout["path"]["items"].items()


@pytest.mark.training
def test_a_rollout_answers_squares_as_row_col_pairs(client: TestClient) -> None:
    run_id = client.post("/training/start", json=VALID_START).json()["experiment_id"]
    assert wait_for_status(client.get, run_id, export_attempted)["onnx"]["status"] == "exported"

    rollout = client.post(f"/experiments/{run_id}/rollout", json={}).json()

    squares = [rollout["start"], rollout["goal"], *rollout["path"]]
    assert all(isinstance(square, list) and len(square) == 2 for square in squares), rollout
    assert rollout["path"][0] == rollout["start"]
    grid = rollout["grid"]
    assert all(grid[row][col] == 0 for row, col in squares)  # every square is open
