"""Run records in a real SQLite file: liveness, the cap under concurrent claims, settings and /health."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from sqlalchemy import update

from core.settings import Settings
from records.database import create_db_engine, make_session_factory, normalize_database_url, upgrade_schema
from records.store import RunStore
from records.tables import RunStatus, TrainingRun, utcnow
from tests.conftest import SMALL_RUN, app_state, wait_for_mlflow

NEW_RUN = SMALL_RUN


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'runs.db'}")
    upgrade_schema(engine)
    return RunStore(make_session_factory(engine))


def test_a_run_whose_worker_went_silent_is_interrupted_after_the_timeout(store: RunStore) -> None:
    run = store.create(NEW_RUN)
    claimed = store.claim_next_queued("other-host:4242:abcd", max_running=5)
    assert claimed is not None and claimed.id == run.id

    assert store.interrupt_stale(timedelta(seconds=30)) == []  # fresh heartbeat: left alone
    with store._session_factory() as session, session.begin():
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run.id)
            .values(heartbeat_at=utcnow() - timedelta(minutes=5))
        )
    interrupted = store.interrupt_stale(timedelta(seconds=30))

    assert interrupted == [run.id]
    record = store.get(run.id)
    assert record.status == "interrupted"
    assert record.error is not None and "heartbeat" in record.error


def test_runs_of_a_live_process_on_this_host_are_not_interrupted_at_start_up(store: RunStore) -> None:
    import os
    import socket

    store.create(NEW_RUN)
    live_owner = f"{socket.gethostname()}:{os.getppid()}:feedbeef"  # our parent process is alive
    claimed = store.claim_next_queued(live_owner, max_running=5)
    assert claimed is not None

    assert store.interrupt_dead_local_owners(f"{socket.gethostname()}:{os.getpid()}:cafe0000") == []
    assert store.get(claimed.id).status == "running"


def test_a_run_finished_with_an_export_to_follow_shows_it_pending_in_the_same_write(store: RunStore) -> None:
    exported, interrupted = store.create(NEW_RUN), store.create(NEW_RUN)
    for _ in range(2):
        assert store.claim_next_queued("host:1:x", max_running=5) is not None

    store.finish(exported.id, RunStatus.COMPLETED, onnx_pending=True)
    store.finish(interrupted.id, RunStatus.INTERRUPTED)

    record = store.get(exported.id)
    assert (record.status, record.onnx_status) == ("completed", "pending")
    record = store.get(interrupted.id)
    assert (record.status, record.onnx_status) == ("interrupted", None)


def test_concurrent_claims_never_exceed_the_cap(store: RunStore) -> None:
    for _ in range(12):
        store.create(NEW_RUN)
    barrier = threading.Barrier(6)
    claimed: list[str] = []

    def claim(worker: int) -> None:
        barrier.wait()
        for _ in range(4):
            run = store.claim_next_queued(f"host:{worker}:x", max_running=3)
            if run is not None:
                claimed.append(run.id)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(claimed) == len(set(claimed)) == 3
    _, running = store.list_runs(status="running")
    assert running == 3


def test_every_setting_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("HOST", "127.0.0.1")
    monkeypatch.setenv("PROGRESS_INTERVAL_S", "2.5")
    monkeypatch.setenv("MAX_CONCURRENT_RUNS", "3")
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:password@db:5432/rl")

    settings = Settings()

    assert (settings.port, settings.host, settings.progress_interval_s) == (9000, "127.0.0.1", 2.5)
    assert settings.max_concurrent_runs == 3
    assert normalize_database_url(settings.database_url) == "postgresql+psycopg2://user:password@db:5432/rl"


def test_defaults_are_the_embedded_stores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "PORT", "HOST", "DATA_DIR"):
        monkeypatch.delenv(name, raising=False)

    settings = Settings()

    assert (settings.host, settings.port, settings.progress_interval_s) == ("0.0.0.0", 8001, 10.0)
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'service.db'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
    assert settings.max_concurrent_runs >= 1


def test_a_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PORT", raising=False)
    (tmp_path / ".env").write_text("PORT=8123\nLOG_JSON=false\n")

    settings = Settings()

    assert settings.port == 8123 and settings.log_json is False


def test_env_example_lists_every_setting() -> None:
    example = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    documented = {line.lstrip("# ").split("=")[0] for line in example.splitlines() if "=" in line}

    assert {name.upper() for name in Settings.model_fields} <= documented


def test_health_reports_database_and_mlflow(client: TestClient) -> None:
    body = client.get("/health").json()

    assert body["status"] == "ok"
    assert body["database"] == {"ok": True, "detail": "database reachable"}
    assert body["mlflow"]["ok"] is True
    assert body["runs_training_here"] == 0
    # Set up in the background after start-up: the experiment may have been null a moment ago.
    experiment_id = wait_for_mlflow(client.get)
    settings = app_state(client).settings
    tracking = MlflowClient(settings.mlflow_tracking_uri)
    experiment = tracking.get_experiment_by_name(settings.mlflow_experiment_name)
    assert experiment is not None and experiment.experiment_id == experiment_id


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]

    for path, method in [
        ("/training/start", "post"),
        ("/training/status/{experiment_id}", "get"),
        ("/training/stop/{experiment_id}", "post"),
        ("/experiments", "get"),
        ("/experiments/{experiment_id}", "get"),
        ("/experiments/{experiment_id}/model.onnx", "get"),
        ("/experiments/{experiment_id}/model.zip", "get"),
        ("/experiments/{experiment_id}/rollout", "post"),
        ("/experiments/{experiment_id}/evaluate", "post"),
        ("/health", "get"),
    ]:
        assert method in paths[path], path
        assert paths[path][method].get("summary"), path
    assert {"StartTrainingRequest", "TrainingStatus", "ExperimentDetail"} <= set(
        schema["components"]["schemas"]
    )
    assert client.get("/docs").status_code == 200
