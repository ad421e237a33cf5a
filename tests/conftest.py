"""Fixtures that own real resources: a SQLite file per test, the real app, real uvicorn processes."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from core.settings import Settings
from main import create_app
from records.admission import NewRun
from records.database import create_db_engine, make_session_factory, upgrade_schema
from records.store import RunStore
from records.tables import TrainingRun
from tests.service_zygote import Zygote, ZygoteChild

# A small run record, for tests that write runs to a store directly.
SMALL_RUN = NewRun(
    algorithm="PPO",
    total_episodes=10,
    timesteps_per_episode=64,
    maze_size=5,
    maze_mode="random",
    seed=1,
    n_envs=2,
    device_requested="cpu",
    hyperparameters={},
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.mlflow_server", "tests.postgres_server", "tests.ray_cluster"]

# A test that uses one of these fixtures (directly or through another fixture) gets the marker, so a
# new test is in the right tier for free. Module-local fixtures that start such a resource themselves
# mark their module (`pytestmark`). The markers are documented in pyproject.toml.
RESOURCE_MARKERS = {
    "postgres_server": "postgres",
    "disposable_postgres_server": "postgres",
    "mlflow_server": "mlflow_server",
    "private_mlflow_server": "mlflow_server",
    "ray_cluster": "ray",
    "live_service": "service",
}


# The longest modules (seconds in one pytest process on 2 cores, 2026-12-03), longest first: `make test`
# runs modules on two workers (pytest-xdist, `--dist loadfile`), which hand out modules in collection
# order, so these start first and no worker is left with a long module at the end. Other modules follow
# in their usual order.
LONGEST_MODULES_FIRST = (
    "test_ray_executor.py",
    "test_processes.py",
    "test_experiments.py",
    "test_sweeps.py",
    "test_process_executor.py",
    "test_guards_and_model_files.py",
    "test_websocket.py",
    "test_postgres.py",
    "test_dashboard_e2e.py",
    "test_training_api.py",
    "test_schemathesis.py",
    "test_checkpoint_faults.py",
    "test_start_admission.py",
    "test_dashboard_usability.py",
    "test_dashboard_compare.py",
)


def pytest_configure(config: pytest.Config) -> None:
    # Two xdist workers on two cores: torch's default of one intra-op thread per core in each worker
    # would oversubscribe the cores (the tests that train in-process slow each other down).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in RESOURCE_MARKERS.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(RESOURCE_MARKERS[fixture])
    rank = {name: index for index, name in enumerate(LONGEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: modules stay whole


# A few seconds of real training: enough steps for several iterations on a 5x5 maze.
TINY_PPO: dict[str, Any] = {
    "algorithm": "PPO",
    "total_episodes": 3,
    "timesteps_per_episode": 128,
    "maze_size": 5,
    "n_envs": 4,
    "seed": 7,
}
TINY_DQN: dict[str, Any] = {
    "algorithm": "DQN",
    "total_episodes": 3,
    "timesteps_per_episode": 200,
    "maze_size": 5,
    "n_envs": 2,
    "seed": 7,
    "hyperparameters": {"learning_starts": 100, "buffer_size": 5000},
}
# Effectively endless: runs until stopped.
LONG_PPO: dict[str, Any] = {**TINY_PPO, "total_episodes": 100_000}

FINAL_STATES = {"completed", "failed", "stopped", "interrupted"}


@pytest.fixture
def run_record(tmp_path: Path) -> Iterator[TrainingRun]:
    """A queued run (SMALL_RUN) as a real SQLite store returns it, for tests of what is derived from it."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'runs.db'}")
    upgrade_schema(engine)
    yield RunStore(make_session_factory(engine)).create(SMALL_RUN)
    engine.dispose()


def settings_for_tests(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "progress_interval_s": 0.5,
        "heartbeat_interval_s": 0.5,
        "heartbeat_timeout_s": 10.0,
        "eval_episodes": 5,
        "max_concurrent_runs": 2,
        "log_level": "WARNING",
        "allowed_hosts": ["testserver"],  # the host name TestClient sends
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def job_settings(tmp_path: Path) -> Settings:
    """Settings for a `TrainingJob` run directly, without a service: MLflow off, a few evaluation mazes."""
    settings = settings_for_tests(tmp_path / "data", mlflow_enabled=False, eval_episodes=4)
    # As the service and every worker set it before a job runs: torch's default (a thread per core) makes
    # these tiny ops crawl on a busy machine.
    torch.set_num_threads(settings.torch_threads)
    return settings


@pytest.fixture
def job_store(job_settings: Settings) -> Iterator[RunStore]:
    """A RunStore on `job_settings`' own SQLite file, migrated."""
    job_settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(job_settings.database_url)
    upgrade_schema(engine)
    yield RunStore(make_session_factory(engine))
    engine.dispose()


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty local MLflow store (`mlflow.db`), created and migrated once per session.

    Creating a store runs MLflow's whole migration history: ~4 s of CPU on the app's background
    thread, which the app's shutdown then waits for. Each test gets a copy instead; the app still
    creates its experiment (with its own artifact directory) as on any start over an existing store.
    """
    path = tmp_path_factory.mktemp("mlflow-store-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return path


def copy_mlflow_store(template: Path, directory: Path) -> None:
    """Give `directory` the template's migrated MLflow store, unless it has a store already."""
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "mlflow.db").exists():
        shutil.copyfile(template, directory / "mlflow.db")


@contextlib.contextmanager
def app_client(data_dir: Path, mlflow_store: Path, **overrides: Any) -> Iterator[TestClient]:
    """A TestClient on the real app (lifespan included) over a SQLite file and MLflow store in
    `data_dir`; the store starts as a copy of `mlflow_store` unless the test points MLflow elsewhere."""
    if "mlflow_tracking_uri" not in overrides:
        copy_mlflow_store(mlflow_store, data_dir)
    with TestClient(create_app(settings_for_tests(data_dir, **overrides))) as client:
        yield client


@pytest.fixture
def make_client(tmp_path: Path, mlflow_store_template: Path) -> Iterator[Callable[..., TestClient]]:
    """Builds TestClients on the real app over one data directory in tmp_path (a second one is a
    second worker on the same files)."""
    with contextlib.ExitStack() as clients:

        def factory(**overrides: Any) -> TestClient:
            return clients.enter_context(app_client(tmp_path / "data", mlflow_store_template, **overrides))

        yield factory


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture(scope="module")
def module_client(
    tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path
) -> Iterator[TestClient]:
    """One app for a whole module of checks that leave nothing behind that another test could see
    (pure 422/404 answers): each app start and stop costs about a second."""
    with app_client(tmp_path_factory.mktemp("module-app") / "data", mlflow_store_template) as client:
        yield client


def app_state(client: TestClient) -> Any:
    """The real app's state (settings, run store) behind a TestClient."""
    return cast(FastAPI, client.app).state


def wait_for_mlflow(get: Callable[[str], httpx.Response], timeout_s: float = 120.0) -> str:
    """Poll `/health` until the service reports its MLflow experiment; its id."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = get("/health").json()
        if body["mlflow_experiment_id"] is not None:
            return str(body["mlflow_experiment_id"])
        time.sleep(0.2)
    raise AssertionError(f"MLflow not set up in {timeout_s} s; last /health: {body}")


def ended_mlflow_run(tracking_uri: str, mlflow_run_id: str, timeout_s: float = 60.0) -> Run:
    """The MLflow run once it has ended. Its end is sent after the run's last uploads, which can still
    be in flight when our record is final (MLflow is logged to in the background)."""
    deadline = time.monotonic() + timeout_s
    run = MlflowClient(tracking_uri).get_run(mlflow_run_id)
    while run.info.status == "RUNNING":
        assert time.monotonic() < deadline, f"MLflow run {mlflow_run_id} still RUNNING after {timeout_s} s"
        time.sleep(0.2)
        run = MlflowClient(tracking_uri).get_run(mlflow_run_id)
    return run


def wait_for_status(
    get: Callable[[str], httpx.Response],
    run_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Poll `/training/status/{id}` until `predicate(body)` holds; fail with the last body otherwise."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = get(f"/training/status/{run_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if predicate(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting on run {run_id}; last status: {body}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_user(name: str) -> list[str]:
    """A command prefix that runs a command as the user `name` (file modes bind non-root users only).

    Skips the test when that user cannot run the service from this checkout (a checkout inside a
    directory only root may enter, e.g. one made by `mktemp -d`): the test needs the user's file modes.
    """
    prefix = ["setpriv", f"--reuid={name}", f"--regid={pwd.getpwnam(name).pw_gid}", "--init-groups"]
    checkout = Path(__file__).resolve().parent.parent
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import uvicorn; open('main.py').read()"],
        capture_output=True,
        cwd=checkout,
    )
    if probe.returncode != 0:
        pytest.skip(f"the user {name} cannot run the service from this checkout: {probe.stderr[-200:]!r}")
    return prefix


_zygote: Zygote | None = None


def service_zygote() -> Zygote:
    """This pytest process's service zygote (tests/service_zygote.py), started on first use and stopped
    when the session ends. ``TEST_SERVICE_ZYGOTE=0`` starts every service as a fresh process instead."""
    global _zygote
    if _zygote is None:
        import tempfile

        _zygote = Zygote(Path(tempfile.mkdtemp(prefix="zygote-")))
    return _zygote


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _zygote is not None:
        _zygote.close()


class LiveService:
    """A real `uvicorn main:app` process on a loopback port, with its own data directory."""

    def __init__(
        self,
        data_dir: Path,
        workers: int = 1,
        env: dict[str, str] | None = None,
        run_as: Sequence[str] = (),
        mlflow_store: Path | None = None,
    ) -> None:
        """:param run_as: a command that runs the service with other privileges (setpriv, runuser).
        :param mlflow_store: a migrated MLflow store (the `mlflow_store_template` fixture) that a
            service over its own local store starts from: creating a store costs seconds of CPU (with
            several workers, one creates it while the others wait on its init lock). None: a fresh
            store, created by the service; the `live_service` fixture's `fresh_mlflow_store=True`.
        """
        self.data_dir = data_dir
        self.mlflow_store = mlflow_store
        self.workers = workers
        self.run_as = list(run_as)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | ZygoteChild | None = None
        self.log_path = data_dir.parent / f"service-{self.port}.log"

    def start(self, timeout_s: float = 180.0) -> LiveService:
        # Not an MLflow store another test left in this process's environment: the service's own.
        inherited = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
        env = {
            **inherited,
            "DATA_DIR": str(self.data_dir),
            "PROGRESS_INTERVAL_S": "0.5",
            "HEARTBEAT_INTERVAL_S": "0.5",
            "HEARTBEAT_TIMEOUT_S": "10",
            "EVAL_EPISODES": "5",
            "MAX_CONCURRENT_RUNS": "2",
            "LOG_LEVEL": "INFO",
            **self.extra_env,
        }
        command = [
            *self.run_as,
            sys.executable,
            "-m",
            "uvicorn",
            "main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # As `python main.py` runs it (TIMEOUT_KEEP_ALIVE_S): the CLI does not read our settings.
            "--timeout-keep-alive",
            str(Settings.model_fields["timeout_keep_alive_s"].default),
        ]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        own_store = "MLFLOW_TRACKING_URI" not in self.extra_env
        if self.mlflow_store is not None and own_store:
            copy_mlflow_store(self.mlflow_store, self.data_dir)
        if not self.run_as and os.environ.get("TEST_SERVICE_ZYGOTE", "1") != "0":
            # A fork of this worker's zygote, which has the libraries imported already (~5 s of CPU less
            # per process, uvicorn's workers included); another user's service starts as users start it.
            self.process = service_zygote().spawn(command[2:], env, PROJECT_ROOT, self.log_path)
        else:
            with self.log_path.open("ab") as log_file:
                self.process = subprocess.Popen(
                    command, cwd=PROJECT_ROOT, env=env, stdout=log_file, stderr=log_file
                )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"service did not become healthy:\n{self.log_tail()}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30)

    def wait_for_mlflow(self, timeout_s: float = 120.0) -> str:
        """The MLflow experiment id, once the service has set up its store in the background. A test
        that needs a run's `mlflow_run_id` while the run still trains waits for this before it starts
        the run: otherwise a short run can finish before a fresh store is ready."""
        with self.client() as http:
            return wait_for_mlflow(http.get, timeout_s)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def restart(self) -> LiveService:
        """Stop gracefully and start again on the same port and data directory."""
        self.stop()
        return self.start()

    def kill(self) -> None:
        """SIGKILL the whole process group member we started: no shutdown code runs."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


@contextlib.contextmanager
def running_service(data_dir: Path, mlflow_store: Path, **env: str) -> Iterator[LiveService]:
    """One started single-worker LiveService over `data_dir`, stopped on exit: for a module-scoped
    service shared by tests that each work on runs of their own (each start and stop of a service costs
    seconds: a Python process importing torch, SB3 and MLflow). The module marks itself `service`."""
    service = LiveService(data_dir, env=env, mlflow_store=mlflow_store)
    try:
        yield service.start()
    finally:
        service.stop()


@pytest.fixture
def live_service(tmp_path: Path, mlflow_store_template: Path) -> Iterator[Callable[..., LiveService]]:
    services: list[LiveService] = []

    def factory(
        workers: int = 1,
        data_dir: Path | None = None,
        run_as: Sequence[str] = (),
        fresh_mlflow_store: bool = False,
        **env: str,
    ) -> LiveService:
        """:param fresh_mlflow_store: the service creates its MLflow store itself (several workers race
        to), instead of starting from a copy of the migrated template."""
        service = LiveService(
            data_dir or tmp_path / "data",
            workers=workers,
            env=env,
            run_as=run_as,
            mlflow_store=None if fresh_mlflow_store else mlflow_store_template,
        )
        services.append(service)
        return service.start()

    yield factory
    for service in services:
        service.stop()
