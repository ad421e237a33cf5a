"""A database blip loses nothing: a running job waits out its writes; /health sees an unwritable database."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext

from mlflow_client import Tracker
from records.admission import NewRun
from records.database import SQLITE_BUSY_TIMEOUT_MS, create_db_engine, make_session_factory, upgrade_schema
from records.store import RunStore
from records.tables import TrainingRun
from tests.conftest import SMALL_RUN, LiveService, settings_for_tests
from tests.postgres_server import PostgresServer
from training.job import JobControl, TrainingJob

# Root ignores file modes; without these two capabilities it is an ordinary owner, as a deployed
# service (a non-root user) would be.
WITHOUT_FILE_PRIVILEGES = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def a_run(total_episodes: int) -> NewRun:
    return dataclasses.replace(
        SMALL_RUN, total_episodes=total_episodes, timesteps_per_episode=128, seed=3, n_envs=4
    )


@pytest.fixture
def service_without_file_privileges(tmp_path: Path, mlflow_store_template: Path) -> Iterator[LiveService]:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing: cannot run the service without root's file privileges")
    # The database in a directory of its own: the test takes that directory away, not the data files.
    database = tmp_path / "database" / "service.db"
    service = LiveService(
        tmp_path / "data",
        env={"DATABASE_URL": f"sqlite:///{database}"},
        run_as=WITHOUT_FILE_PRIVILEGES,
        mlflow_store=mlflow_store_template,
    )
    try:
        yield service.start()
    finally:
        service.stop()


@pytest.mark.service
def test_health_reports_a_database_it_cannot_write(
    service_without_file_privileges: LiveService, tmp_path: Path
) -> None:
    service = service_without_file_privileges
    # Not the file itself: SQLite reuses a descriptor the process has open on the same file, so only
    # a directory that cannot be searched keeps the service's new connections out.
    directory = tmp_path / "database"
    with service.client() as http:
        assert http.get("/health").json()["database"]["ok"] is True
        mode = stat.S_IMODE(directory.stat().st_mode)

        directory.chmod(0)
        try:
            health = http.get("/health")
        finally:
            directory.chmod(mode)

        assert health.status_code == 200
        assert health.json()["status"] == "degraded"
        assert health.json()["database"]["ok"] is False, health.json()
        assert "cannot be written" in health.json()["database"]["detail"]
        recovered = http.get("/health").json()
        assert recovered["database"]["ok"] is True, recovered


class JobInThread:
    """A real TrainingJob of one run over a real database and a real MLflow store, on a thread.

    :param sqlite_busy_timeout_ms: how long the job's SQLite writes wait for a lock before they fail.
    """

    def __init__(
        self,
        url: str,
        data_dir: Path,
        total_episodes: int,
        sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    ) -> None:
        engine = create_db_engine(url, sqlite_busy_timeout_ms=sqlite_busy_timeout_ms)
        upgrade_schema(engine)
        # Every error the database gave the job's store (refused connections, locked writes): what the
        # test waits for, instead of a fixed time, before it ends the blip.
        self.database_errors: list[BaseException] = []
        event.listen(engine, "handle_error", self._saw_error)
        self.store = RunStore(make_session_factory(engine))
        self.tracking_uri = f"sqlite:///{data_dir / 'mlflow.db'}"
        self.tracker = Tracker(self.tracking_uri, "blips", data_dir / "artifacts")
        run_id = self.store.create(a_run(total_episodes)).id
        claimed = self.store.claim_next_queued("blip-test:1:a", max_running=1)
        assert claimed is not None and claimed.id == run_id
        settings = settings_for_tests(data_dir, database_url=url)
        job = TrainingJob(settings, self.store, self.tracker, claimed, JobControl())
        self.run_id = run_id
        self.onnx_path = settings.run_dir(run_id) / "model.onnx"
        self.thread = threading.Thread(target=job.execute, daemon=True)

    def _saw_error(self, context: ExceptionContext) -> None:
        self.database_errors.append(context.original_exception)

    def wait_for_database_error(self, timeout_s: float = 180) -> None:
        """Until a write or read of the job's store has failed (the blip hit it)."""
        deadline = time.monotonic() + timeout_s
        while not self.database_errors:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the job never met the blip"
            time.sleep(0.05)

    def record(self) -> TrainingRun:
        return self.store.get(self.run_id)

    def finish(self) -> TrainingRun:
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), "the job did not end"
        self.tracker.flush(60)
        return self.record()


def assert_completed_and_exported(job: JobInThread) -> None:
    record = job.finish()
    assert record.status == "completed", record.error
    assert record.error is None
    assert record.effective_hyperparameters is not None
    assert record.onnx_status == "exported", record.onnx_error
    assert record.model_path and Path(record.model_path).is_file()
    experiment = MlflowClient(job.tracking_uri).get_experiment_by_name("blips")
    assert experiment is not None
    (mlflow_run,) = MlflowClient(job.tracking_uri).search_runs([experiment.experiment_id])
    assert mlflow_run.info.status == "FINISHED"


def test_a_blip_as_a_run_starts_does_not_fail_it(
    disposable_postgres_server: PostgresServer, tmp_path: Path
) -> None:
    server = disposable_postgres_server
    job = JobInThread(server.url(server.create_database()), tmp_path, total_episodes=2)

    server.stop(mode="fast")
    job.thread.start()
    job.wait_for_database_error()  # the job built its model and tried to record its set-up: refused
    server.start()

    assert_completed_and_exported(job)


@pytest.mark.training
def test_a_blip_as_a_run_exports_leaves_it_completed_and_exported(tmp_path: Path) -> None:
    database = tmp_path / "runs.db"
    # The production busy timeout (30 s) made this test wait 40 s; a write fails the same way after 2 s.
    job = JobInThread(f"sqlite:///{database}", tmp_path, total_episodes=2, sqlite_busy_timeout_ms=2_000)
    job.thread.start()
    deadline = time.monotonic() + 120
    while (record := job.record()).onnx_status != "pending":
        assert time.monotonic() < deadline and job.thread.is_alive(), record
        time.sleep(0.02)

    # The final state is written; the export records its outcome while another connection holds the
    # write lock for longer than SQLite's busy timeout, so the write fails rather than waits.
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        job.database_errors.clear()  # only what the lock causes from here on
        deadline = time.monotonic() + 180
        while not job.onnx_path.exists():
            assert time.monotonic() < deadline and job.thread.is_alive(), "no ONNX export"
            time.sleep(0.05)
        # The export verifies its file, then writes its outcome: that write waits out the busy timeout
        # and fails ("database is locked"); the job retries it after the lock is gone.
        job.wait_for_database_error()
        assert any("locked" in str(error) for error in job.database_errors), job.database_errors
        holder.execute("ROLLBACK")
    finally:
        holder.close()

    assert_completed_and_exported(job)
