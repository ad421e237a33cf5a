"""A run's own log (`GET /experiments/{id}/logs`, read from any worker) and its end-of-run POST to a
real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TINY_PPO
from tests.test_experiments import run_to_end


class Receiver:
    """A real HTTP server on 127.0.0.1 that answers the first `failures` POSTs with 503, then 204."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[dict[str, Any]] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code = 503 if len(receiver.answers) < receiver.failures else 204
                receiver.bodies.append(body)
                receiver.answers.append(code)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/maze"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(failures=2)
    yield server
    server.close()


@pytest.mark.training
def test_the_end_of_a_run_is_posted_once_after_retries_and_logged_for_every_worker(
    make_client: Callable[..., TestClient], receiver: Receiver
) -> None:
    client = make_client(notify_backoff_s=0.2)
    status = run_to_end(client, {**TINY_PPO, "name": "notified", "notify_url": receiver.url})
    run_id = status["experiment_id"]

    detail: dict[str, Any] = {}
    for _ in range(100):
        detail = client.get(f"/experiments/{run_id}").json()
        if detail["notify_state"] in ("sent", "failed"):
            break
        threading.Event().wait(0.2)
    assert detail["notify_state"] == "sent"
    assert receiver.answers == [503, 503, 204]  # retried with back-off, then exactly one success
    body = receiver.bodies[-1]
    assert body["event"] == "run_finished" and body["experiment_id"] == run_id
    assert body["status"] == "completed" and body["stop_reason"] == status["stop_reason"]
    assert body["name"] == "notified"

    # A second worker process on the same files reads the same log.
    other_worker = make_client()
    logs = other_worker.get(f"/experiments/{run_id}/logs", params={"limit": 1000}).json()
    events = [record["event"] for record in logs["records"]]
    assert events[0] == "run_submitted" and logs["truncated"] is False, events
    assert "run_notify_attempt_failed" in events and events.index("run_notified") > events.index(
        "run_submitted"
    )
    assert all(record["experiment_id"] == run_id and record["level"] for record in logs["records"])
    last_two = other_worker.get(f"/experiments/{run_id}/logs", params={"limit": 2}).json()
    assert last_two["records"] == logs["records"][-2:] and last_two["truncated"] is True
    assert other_worker.get(f"/experiments/{run_id}/logs", params={"limit": 0}).status_code == 422
