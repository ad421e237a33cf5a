"""A run whose ONNX export failed, or was left `pending` by a worker that died, can be exported again:
by `POST /experiments/{id}/export`, and by the service itself at start-up (issue 16, item 1)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from records.tables import TrainingRun, utcnow
from tests.conftest import FINAL_STATES, LONG_PPO, TINY_PPO, app_state, wait_for_status

pytestmark = pytest.mark.training  # every test trains a run before it exports it again


def export_attempted(status: dict[str, Any]) -> bool:
    onnx = status["onnx"]
    return status["status"] in FINAL_STATES and onnx is not None and onnx["status"] != "pending"


def test_a_failed_export_is_exported_again_on_request(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    run_id = client.post("/training/start", json=TINY_PPO).json()["experiment_id"]
    # A real fault: a directory where the ONNX file must go, so the export's final rename fails.
    blocker = app_state(client).settings.run_dir(run_id) / "model.onnx"
    blocker.mkdir(parents=True)

    ended = wait_for_status(client.get, run_id, export_attempted)
    assert ended["status"] == "completed"
    assert ended["onnx"]["status"] == "failed", ended["onnx"]
    assert client.get(f"/experiments/{run_id}/model.onnx").status_code == 404

    still_blocked = client.post(f"/experiments/{run_id}/export")
    assert still_blocked.status_code == 200, still_blocked.text
    assert still_blocked.json()["status"] == "failed" and still_blocked.json()["error"]

    shutil.rmtree(blocker)
    exported = client.post(f"/experiments/{run_id}/export")
    assert exported.status_code == 200, exported.text
    info = exported.json()
    assert info["status"] == "exported" and info["parity_passed"] is True and info["error"] is None
    download = client.get(info["download_url"])
    assert download.status_code == 200 and len(download.content) == info["size_bytes"]
    assert client.get(f"/training/status/{run_id}").json()["onnx"]["status"] == "exported"
    assert client.post(f"/experiments/{run_id}/rollout", json={}).status_code == 200

    again = client.post(f"/experiments/{run_id}/export")  # already exported: answered as it is
    assert again.status_code == 200 and again.json() == info


def test_a_running_or_unknown_run_is_not_exported(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    run_id = client.post("/training/start", json=LONG_PPO).json()["experiment_id"]
    try:
        answer = client.post(f"/experiments/{run_id}/export")
        assert answer.status_code == 409, answer.text
        assert "when it ends" in answer.json()["detail"]
    finally:
        client.post(f"/training/stop/{run_id}", params={"wait_s": 30})
    unknown = client.post("/experiments/00000000-0000-4000-8000-000000000000/export")
    assert unknown.status_code == 404


def test_an_export_a_dead_worker_left_pending_is_taken_over_at_start_up(
    make_client: Callable[..., TestClient],
) -> None:
    first = make_client()
    run_id = first.post("/training/start", json=TINY_PPO).json()["experiment_id"]
    done = wait_for_status(first.get, run_id, export_attempted)
    assert done["onnx"]["status"] == "exported"
    # What a worker killed during the export leaves: the run final, its export pending, no ONNX file,
    # and as owner a process of this host that is gone.
    settings, store = app_state(first).settings, app_state(first).run_store
    (settings.run_dir(run_id) / "model.onnx").unlink()
    gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    owner = f"{socket.gethostname()}:{gone.stdout.strip()}:deadbeef"
    with store._session_factory() as session, session.begin():
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_id)
            .values(onnx_status="pending", onnx_size_bytes=None, owner=owner, heartbeat_at=utcnow())
        )
    answer = first.post(f"/experiments/{run_id}/export")  # a fresh heartbeat, but its owner is gone
    assert answer.status_code == 200 and answer.json()["status"] == "exported", answer.text

    # Left pending again by a worker on another host that went silent long ago: a new worker of the
    # service takes it over by itself at start-up.
    (settings.run_dir(run_id) / "model.onnx").unlink()
    with store._session_factory() as session, session.begin():
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_id)
            .values(
                onnx_status="pending",
                owner="elsewhere:1:cafe",
                heartbeat_at=utcnow() - timedelta(hours=1),
            )
        )
    second = make_client()
    taken_over = wait_for_status(second.get, run_id, export_attempted, timeout_s=120)
    assert taken_over["onnx"]["status"] == "exported", taken_over["onnx"]
    assert (settings.run_dir(run_id) / "model.onnx").is_file()


def test_a_pending_export_of_a_live_worker_is_left_alone(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    run_id = client.post("/training/start", json=TINY_PPO).json()["experiment_id"]
    wait_for_status(client.get, run_id, export_attempted)
    store = app_state(client).run_store
    with store._session_factory() as session, session.begin():
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_id)
            .values(onnx_status="pending", owner="elsewhere:1:cafe", heartbeat_at=utcnow())
        )
    answer = client.post(f"/experiments/{run_id}/export")
    assert answer.status_code == 409, answer.text
    assert "being exported now" in answer.json()["detail"]
