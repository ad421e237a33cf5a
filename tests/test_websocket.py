"""Live progress over real WebSockets: to a live uvicorn over TCP, from one or several workers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import FINAL_STATES, LONG_PPO, TINY_PPO, LiveService, wait_for_status

MESSAGE_FIELDS = {
    "type", "experiment_id", "status", "episode", "total_episodes", "timesteps", "total_timesteps",
    "reward", "success_rate", "loss", "fps", "elapsed_s", "eta_s", "error", "tracking_status", "timestamp",
    # The held-out evaluation and why a run ended (added with early stopping).
    "eval_success_rate", "eval_path_efficiency", "best_eval_success_rate", "best_eval_timesteps",
    "stop_reason",
}  # fmt: skip


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
    live_service: Callable[..., LiveService],
) -> None:
    service = live_service()
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
    live_service: Callable[..., LiveService],
) -> None:
    service = live_service()
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


def test_an_unknown_run_is_closed_with_4404(live_service: Callable[..., LiveService]) -> None:
    service = live_service()

    for run_id in ("00000000-0000-4000-8000-000000000000", "not-a-uuid"):
        with connect(ws_url(service, run_id)) as ws, pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)

        assert closed.value.rcvd is not None, run_id
        assert closed.value.rcvd.code == 4404, run_id
        assert closed.value.rcvd.reason == "unknown experiment_id"


def test_many_clients_and_vanishing_ones_do_not_disturb_each_other(
    live_service: Callable[..., LiveService],
) -> None:
    service = live_service()
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
