"""Live progress over real WebSockets: to a live uvicorn over TCP, from one or several workers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import FINAL_STATES, LONG_PPO, TINY_PPO, LiveService, running_service, wait_for_status

pytestmark = pytest.mark.service

MESSAGE_FIELDS = {
    "type", "experiment_id", "status", "episode", "total_episodes", "timesteps", "total_timesteps",
    "reward", "success_rate", "loss", "fps", "elapsed_s", "eta_s", "error", "tracking_status", "timestamp",
    # The held-out evaluation and why a run ended (added with early stopping).
    "eval_success_rate", "eval_path_efficiency", "best_eval_success_rate", "best_eval_timesteps",
    "stop_reason",
    # The metric points logged since the previous message (dense live charts).
    "points", "points_after",
}  # fmt: skip


@pytest.fixture(scope="module")
def one_worker(
    tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path
) -> Iterator[LiveService]:
    """One single-worker service for the tests that each watch runs of their own and stop them."""
    with running_service(tmp_path_factory.mktemp("websocket") / "data", mlflow_store_template) as service:
        yield service


def ws_url(service: LiveService, run_id: str) -> str:
    return f"ws://127.0.0.1:{service.port}/ws/training/{run_id}"


def receive(ws: ClientConnection, timeout: float = 15) -> dict[str, Any]:
    return dict(json.loads(ws.recv(timeout=timeout)))


def start_running(service: LiveService, body: dict[str, Any]) -> str:
    with service.client() as http:
        run_id = str(http.post("/training/start", json=body).json()["experiment_id"])
        wait_for_status(http.get, run_id, lambda s: s["timesteps"] > 0)
    return run_id


def test_progress_arrives_every_interval_then_a_final_message_and_a_normal_close(
    one_worker: LiveService,
) -> None:
    service = one_worker
    run_id = start_running(service, LONG_PPO)

    with connect(ws_url(service, run_id)) as ws:
        first = receive(ws, timeout=5)  # the latest snapshot, at once
        messages = [receive(ws) for _ in range(3)]
        with service.client() as http:
            http.post(f"/training/stop/{run_id}")
        while (final := receive(ws))["type"] != "final":
            pass
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)

    assert set(first) == MESSAGE_FIELDS
    assert first["experiment_id"] == run_id and first["status"] == "running"
    assert first["total_episodes"] == LONG_PPO["total_episodes"]
    timesteps = [m["timesteps"] for m in [first, *messages]]
    assert timesteps == sorted(timesteps) and timesteps[-1] > timesteps[0]
    assert all(m["type"] == "progress" and m["fps"] > 0 and m["eta_s"] > 0 for m in messages)
    assert final["status"] == "stopped"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_a_late_client_of_a_finished_run_gets_the_final_message_and_a_normal_close(
    one_worker: LiveService,
) -> None:
    service = one_worker
    with service.client() as http:
        run_id = http.post("/training/start", json=TINY_PPO).json()["experiment_id"]
        done = wait_for_status(http.get, run_id, lambda s: s["status"] in FINAL_STATES)

    with connect(ws_url(service, run_id)) as ws:
        message = receive(ws, timeout=5)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)

    assert message["type"] == "final"
    assert message["status"] == "completed"
    assert message["episode"] == message["total_episodes"] == TINY_PPO["total_episodes"]
    assert message["success_rate"] == done["success_rate"]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_an_unknown_run_is_closed_with_4404(one_worker: LiveService) -> None:
    service = one_worker

    for run_id in ("00000000-0000-4000-8000-000000000000", "not-a-uuid"):
        with connect(ws_url(service, run_id)) as ws, pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)

        assert closed.value.rcvd is not None, run_id
        assert closed.value.rcvd.code == 4404, run_id
        assert closed.value.rcvd.reason == "unknown experiment_id"


def test_many_clients_and_vanishing_ones_do_not_disturb_each_other(
    one_worker: LiveService,
) -> None:
    service = one_worker
    run_id = start_running(service, LONG_PPO)
    received: dict[int, list[dict[str, Any]]] = {i: [] for i in range(20)}
    errors: list[BaseException] = []

    def listen(index: int) -> None:
        try:
            with connect(ws_url(service, run_id)) as ws:
                for _ in range(4):
                    received[index].append(receive(ws))
        except BaseException as error:  # reported below, not swallowed
            errors.append(error)

    # Clients that connect and vanish without a close handshake.
    rude = [connect(ws_url(service, run_id)) for _ in range(10)]
    for ws in rude:
        ws.socket.close()
    listeners = [threading.Thread(target=listen, args=(i,)) for i in received]
    for thread in listeners:
        thread.start()
    for thread in listeners:
        thread.join(timeout=60)

    assert errors == []
    assert all(len(messages) == 4 for messages in received.values())
    with service.client() as http:
        assert http.get(f"/training/status/{run_id}").json()["status"] == "running"
        http.post(f"/training/stop/{run_id}")


def test_progress_reaches_clients_of_every_worker(live_service: Callable[..., LiveService]) -> None:
    service = live_service(workers=3)
    run_id = start_running(service, LONG_PPO)

    # Each connection lands on some worker; whichever it is, it must stream the run's progress.
    for _ in range(6):
        with connect(ws_url(service, run_id)) as ws:
            first, second = receive(ws), receive(ws)
        assert first["experiment_id"] == run_id
        assert second["timesteps"] >= first["timesteps"]
        time.sleep(0.05)
    with service.client() as http:
        http.post(f"/training/stop/{run_id}")


# Iterations of a fraction of a second: several training iterations (MLflow points) per message.
DENSE_PPO: dict[str, Any] = {**TINY_PPO, "total_episodes": 24}


def collect_points(service: LiveService, run_id: str, into: dict[str, Any]) -> None:
    """One client's view of a run, as the dashboard builds it: every message until `final` and the
    points they carried; where a message's `points_after` says points were missed (the worker sent
    them before this client joined), the history read over HTTP fills the gap."""
    points: dict[str, dict[int, float]] = {}
    messages: list[dict[str, Any]] = []
    refetched = 0
    with connect(ws_url(service, run_id)) as ws:
        while True:
            message = receive(ws, timeout=60)
            messages.append(message)
            for key, new in (message["points"] or {}).items():
                after = message["points_after"][key]
                if after is not None and max(points.get(key, {-1: 0.0})) < after:
                    refetched += 1
                    with service.client() as http:
                        history = http.get(f"/experiments/{run_id}").json()["history"][key]
                    points.setdefault(key, {}).update({p["step"]: p["value"] for p in history})
                points.setdefault(key, {}).update({int(step): value for step, value in new})
            if message["type"] == "final":
                break
    into.update(points=points, messages=messages, refetched=refetched)


def test_progress_messages_carry_every_point_of_the_finished_curve_on_every_worker(
    live_service: Callable[..., LiveService],
) -> None:
    service = live_service(workers=2, PROGRESS_INTERVAL_S="2")
    service.wait_for_mlflow()  # the run has its MLflow run from its first step
    with service.client() as http:
        run_id = http.post("/training/start", json=DENSE_PPO).json()["experiment_id"]
        wait_for_status(http.get, run_id, lambda s: s["status"] == "running")
    views: list[dict[str, Any]] = [{}, {}]  # two clients: each may land on either worker
    clients = [threading.Thread(target=collect_points, args=(service, run_id, view)) for view in views]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=240)
    with service.client() as http:
        wait_for_status(http.get, run_id, lambda s: (s.get("onnx") or {}).get("status") == "exported")
        history = http.get(f"/experiments/{run_id}").json()["history"]

    finished = {key: {p["step"]: p["value"] for p in points} for key, points in history.items()}
    assert len(finished["reward"]) >= 12, f"too few iterations to say anything: {finished['reward']}"
    for view in views:
        assert view, "a client did not see the run end"
        carried = [len(m["points"]["reward"]) for m in view["messages"] if m["points"]]
        # The 2 s cadence stays, and messages carry several points each: fewer messages than points.
        assert len([n for n in carried if n]) < len(view["points"]["reward"]) and max(carried) > 1, carried
        for key, curve in finished.items():
            live = view["points"].get(key, {})
            # The same points as the finished curve. Only MLflow points logged after the final message
            # was sent (MLflow lagging the run's final state) could be missing, at its very end.
            assert live == {step: curve[step] for step in sorted(curve)[: len(live)]}, key
            assert len(curve) - len(live) <= 1, f"{key}: live {len(live)} points, finished {len(curve)}"
