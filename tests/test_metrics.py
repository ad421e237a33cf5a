"""`GET /metrics` scraped from real uvicorn processes and parsed as Prometheus does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from websockets.sync.client import connect

from tests.conftest import LONG_PPO, LiveService, wait_for_status

STATUS_ROUTE = "/training/status/{experiment_id}"


def scrape(http: httpx.Client) -> dict[str, list[Sample]]:
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    matching = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(matching) == 1, f"{name}{labels} not exactly once in {samples}"
    return matching[0]


def test_metrics_need_the_api_key_and_count_requests_by_route_template(
    live_service: Callable[..., LiveService],
) -> None:
    service = live_service(API_KEY="metrics-key")
    with service.client() as http:
        assert http.get("/metrics").status_code == 401
        http.headers["X-API-Key"] = "metrics-key"
        unknown = [str(uuid.uuid4()) for _ in range(3)]
        for run_id in unknown:
            assert http.get(f"/training/status/{run_id}").status_code == 404
        metrics = scrape(http)

    requests = metrics["rlmaze_http_requests"]
    assert value(requests, "rlmaze_http_requests_total", method="GET", route=STATUS_ROUTE, status="404") == 3
    # The API-key gate answers before routing: its 401s carry no route template.
    assert value(requests, "rlmaze_http_requests_total", method="GET", route="unmatched", status="401") == 1
    assert not any(run_id in str(sample.labels) for sample in requests for run_id in unknown)
    latency = metrics["rlmaze_http_request_duration_seconds"]
    count = value(latency, "rlmaze_http_request_duration_seconds_count", method="GET", route=STATUS_ROUTE)
    assert count == 3
    assert value(latency, "rlmaze_http_request_duration_seconds_sum", method="GET", route=STATUS_ROUTE) > 0
    runs = metrics["rlmaze_runs"]
    assert {s.labels["state"] for s in runs} == {
        "queued", "running", "completed", "failed", "stopped", "interrupted"
    }  # fmt: skip
    assert all(s.value == 0 for s in runs)
    assert value(metrics["rlmaze_queue_length"], "rlmaze_queue_length") == 0
    assert metrics["rlmaze_training_steps_per_second"] == []
    assert value(metrics["rlmaze_websocket_clients"], "rlmaze_websocket_clients") == 0
    assert value(metrics["rlmaze_mlflow_pending_operations"], "rlmaze_mlflow_pending_operations") >= 0


def test_two_workers_report_the_sum_of_both_whichever_answers(
    live_service: Callable[..., LiveService],
) -> None:
    service = live_service(workers=2)
    with service.client() as http:
        # New connections are spread over the workers by the kernel: keep asking until both answered.
        workers: set[str] = set()
        deadline = time.monotonic() + 60
        while len(workers) < 2:
            assert time.monotonic() < deadline, f"only worker(s) {workers} answered"
            with service.client() as fresh:
                workers.add(fresh.get("/health").json()["worker"])
        sent = 20
        for _ in range(sent):
            with service.client() as fresh:  # a new connection each: both workers get some
                assert fresh.get(f"/training/status/{uuid.uuid4()}").status_code == 404

        run_id = str(http.post("/training/start", json=LONG_PPO).json()["experiment_id"])
        try:
            status = wait_for_status(http.get, run_id, lambda s: s["fps"] is not None)
            with connect(f"ws://127.0.0.1:{service.port}/ws/training/{run_id}"):
                time.sleep(2.5)  # the sampler copies the client count every second
                scrapes = []
                for _ in range(6):
                    with service.client() as fresh:
                        scrapes.append(scrape(fresh))
        finally:
            http.post(f"/training/stop/{run_id}")

    for metrics in scrapes:
        requests = metrics["rlmaze_http_requests"]
        assert (
            value(requests, "rlmaze_http_requests_total", method="GET", route=STATUS_ROUTE, status="404")
            == sent
        )
        assert value(metrics["rlmaze_runs"], "rlmaze_runs", state="running") == 1
        assert value(metrics["rlmaze_websocket_clients"], "rlmaze_websocket_clients") == 1
        speed = value(
            metrics["rlmaze_training_steps_per_second"],
            "rlmaze_training_steps_per_second",
            experiment_id=run_id,
            algorithm="PPO",
        )
        assert speed > 0
    assert status["fps"] > 0
