"""Limits and the optional API key: what a client without the key, or with too much, is told."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.conftest import LONG_PPO, TINY_PPO

KEY = "s3cret-key"


@pytest.fixture
def guarded(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(api_key=KEY)


def test_rest_calls_need_the_api_key(guarded: TestClient) -> None:
    missing = guarded.post("/training/start", json=TINY_PPO)
    wrong = guarded.get("/experiments", headers={"X-API-Key": "nope"})
    right = guarded.get("/experiments", headers={"X-API-Key": KEY})

    assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
    assert missing.headers["WWW-Authenticate"] == "ApiKey"
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert guarded.get("/health").status_code == 200  # monitoring stays open


@pytest.mark.training
def test_websockets_need_the_key_as_subprotocol_or_token(guarded: TestClient) -> None:
    run_id = guarded.post("/training/start", json=TINY_PPO, headers={"X-API-Key": KEY}).json()[
        "experiment_id"
    ]

    with (
        guarded.websocket_connect(f"/ws/training/{run_id}") as ws,
        pytest.raises(WebSocketDisconnect) as refused,
    ):
        ws.receive_json()
    assert refused.value.code == 1008

    with guarded.websocket_connect(f"/ws/training/{run_id}", subprotocols=[f"apikey.{KEY}"]) as ws:
        assert ws.accepted_subprotocol == f"apikey.{KEY}"
        assert ws.receive_json()["experiment_id"] == run_id
    with guarded.websocket_connect(f"/ws/training/{run_id}?token={KEY}") as ws:
        assert ws.receive_json()["experiment_id"] == run_id
    guarded.post(f"/training/stop/{run_id}", headers={"X-API-Key": KEY})


@pytest.mark.training
def test_websockets_from_foreign_origins_are_refused(client: TestClient) -> None:
    run_id = client.post("/training/start", json=TINY_PPO).json()["experiment_id"]

    foreign = {"origin": "http://evil.example"}
    with (
        client.websocket_connect(f"/ws/training/{run_id}", headers=foreign) as ws,
        pytest.raises(WebSocketDisconnect) as refused,
    ):
        ws.receive_json()
    same_origin = {"origin": "http://testserver"}
    with client.websocket_connect(f"/ws/training/{run_id}", headers=same_origin) as ws:
        assert ws.receive_json()["experiment_id"] == run_id

    assert refused.value.code == 1008
    client.post(f"/training/stop/{run_id}")


def test_cors_allows_only_configured_origins(make_client: Callable[..., TestClient]) -> None:
    client = make_client(cors_origins=["http://dashboard.example"])
    preflight = {"Access-Control-Request-Method": "POST"}

    allowed = client.options("/training/start", headers={"Origin": "http://dashboard.example", **preflight})
    denied = client.options("/training/start", headers={"Origin": "http://evil.example", **preflight})

    assert allowed.headers.get("access-control-allow-origin") == "http://dashboard.example"
    assert "access-control-allow-origin" not in denied.headers


@pytest.mark.training
def test_a_full_queue_answers_429_with_retry_after(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_concurrent_runs=1, max_queued_runs=2)
    run_ids = [client.post("/training/start", json=LONG_PPO).json()["experiment_id"] for _ in range(3)]

    refused = client.post("/training/start", json=LONG_PPO)

    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "30"
    assert "MAX_QUEUED_RUNS" in refused.json()["detail"]
    for run_id in run_ids:
        client.post(f"/training/stop/{run_id}")


def test_oversized_bodies_get_413(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_request_bytes=2048)
    body = {**TINY_PPO, "hyperparameters": {"learning_rate": 0.001}, "padding": "x" * 4096}

    response = client.post("/training/start", json=body)

    assert response.status_code == 413
    assert "2048 bytes" in response.json()["detail"]


def test_the_server_maze_size_limit_is_enforced(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_maze_size=12)

    response = client.post("/training/start", json={**TINY_PPO, "maze_size": 13})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "maze_size"]
    assert "at most 12" in response.json()["detail"][0]["msg"]
