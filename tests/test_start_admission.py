"""Admission of `POST /training/start`: the queue cap holds under concurrent starts, and a start
retried with its `Idempotency-Key` creates one run."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import LONG_PPO, TINY_PPO, LiveService

CONCURRENT_STARTS = 20
MAX_CONCURRENT_RUNS = 2
MAX_QUEUED_RUNS = 3


def start_all_at_once(
    service: LiveService, bodies: list[dict[str, Any]], **headers: str
) -> list[httpx.Response]:
    with (
        ThreadPoolExecutor(max_workers=len(bodies)) as pool,
        httpx.Client(base_url=service.base_url, timeout=120) as http,
    ):
        return list(pool.map(lambda body: http.post("/training/start", json=body, headers=headers), bodies))


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_starts_accept_exactly_what_the_caps_allow(
    live_service: Callable[..., LiveService], workers: int
) -> None:
    service = live_service(
        workers=workers,
        MAX_CONCURRENT_RUNS=str(MAX_CONCURRENT_RUNS),
        MAX_QUEUED_RUNS=str(MAX_QUEUED_RUNS),
    )

    answers = start_all_at_once(service, [{**LONG_PPO, "seed": seed} for seed in range(CONCURRENT_STARTS)])

    codes = sorted(answer.status_code for answer in answers)
    assert codes == [200] * (MAX_CONCURRENT_RUNS + MAX_QUEUED_RUNS) + [429] * (
        CONCURRENT_STARTS - MAX_CONCURRENT_RUNS - MAX_QUEUED_RUNS
    ), [answer.text for answer in answers]
    assert all(answer.headers["Retry-After"] for answer in answers if answer.status_code == 429)
    with service.client() as http:
        listed = http.get("/experiments", params={"limit": 100}).json()
    assert listed["total"] == MAX_CONCURRENT_RUNS + MAX_QUEUED_RUNS, listed


def test_a_start_repeated_with_its_idempotency_key_answers_the_same_run(client: TestClient) -> None:
    first = client.post("/training/start", json=TINY_PPO, headers={"Idempotency-Key": "order-17"})
    again = client.post("/training/start", json=TINY_PPO, headers={"Idempotency-Key": "order-17"})
    other = client.post("/training/start", json=TINY_PPO, headers={"Idempotency-Key": "order-18"})

    assert first.status_code == again.status_code == other.status_code == 200, [first.text, again.text]
    assert again.json()["experiment_id"] == first.json()["experiment_id"]
    assert other.json()["experiment_id"] != first.json()["experiment_id"]
    assert client.get("/experiments").json()["total"] == 2


def test_an_idempotency_key_reused_with_another_body_gets_422(client: TestClient) -> None:
    first = client.post("/training/start", json=TINY_PPO, headers={"Idempotency-Key": "order-17"})
    changed = client.post(
        "/training/start", json={**TINY_PPO, "seed": 8}, headers={"Idempotency-Key": "order-17"}
    )

    assert first.status_code == 200, first.text
    assert changed.status_code == 422, changed.text
    assert "Idempotency-Key" in str(changed.json()["detail"])
    assert client.get("/experiments").json()["total"] == 1


def test_concurrent_retries_with_one_idempotency_key_create_one_run(
    live_service: Callable[..., LiveService],
) -> None:
    service = live_service(workers=2)

    answers = start_all_at_once(service, [TINY_PPO] * 8, **{"Idempotency-Key": "retry-storm"})

    assert [answer.status_code for answer in answers] == [200] * 8, [answer.text for answer in answers]
    assert len({answer.json()["experiment_id"] for answer in answers}) == 1
    with service.client() as http:
        assert http.get("/experiments").json()["total"] == 1
