"""The executors through their one interface, and the service's scheduling on top of them: real tiny
training on a real SQLite file, MLflow off."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from api.schemas import StartTrainingRequest
from core.settings import Settings
from records.database import create_db_engine, make_session_factory, upgrade_schema
from records.store import RunStore
from records.tables import RunStatus, TrainingRun
from tests.conftest import LONG_PPO, SMALL_RUN, TINY_PPO, settings_for_tests
from training.executors import make_executor
from training.executors.processes import ProcessExecutor
from training.executors.threads import ThreadExecutor
from training_service import TrainingService

ENDLESS_RUN = dataclasses.replace(SMALL_RUN, total_episodes=100_000)
ENDED = {status.value for status in (RunStatus.COMPLETED, RunStatus.STOPPED, RunStatus.INTERRUPTED)}


def settings_without_mlflow(tmp_path: Path, **overrides: object) -> Settings:
    return settings_for_tests(tmp_path / "data", mlflow_enabled=False, eval_episodes=0, **overrides)


@pytest.fixture
def store_for(tmp_path: Path) -> Iterator[Callable[[Settings], RunStore]]:
    """A RunStore on the settings' own SQLite file, where child processes find it too."""
    engines = []

    def factory(settings: Settings) -> RunStore:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_db_engine(settings.database_url)
        upgrade_schema(engine)
        engines.append(engine)
        return RunStore(make_session_factory(engine))

    yield factory
    for engine in engines:
        engine.dispose()


def wait_for(
    store: RunStore, run_id: str, predicate: Callable[[TrainingRun], bool], timeout_s: float = 120
) -> TrainingRun:
    deadline = time.monotonic() + timeout_s
    run = store.get(run_id)
    while not predicate(run):
        assert time.monotonic() < deadline, f"run {run_id} timed out as {run.status}, {run.timesteps} steps"
        time.sleep(0.2)
        run = store.get(run_id)
    return run


def has_trained(run: TrainingRun) -> bool:
    return run.timesteps > 0


def has_ended(run: TrainingRun) -> bool:
    return run.status in ENDED


def claimed(store: RunStore, kind: str = "small") -> TrainingRun:
    store.create(ENDLESS_RUN if kind == "endless" else SMALL_RUN)
    run = store.claim_next_queued("tests:1:executor", max_running=100)
    assert run is not None
    return run


@pytest.mark.training
def test_the_service_keeps_to_the_cap_and_fills_a_freed_slot(
    tmp_path: Path, store_for: Callable[[Settings], RunStore]
) -> None:
    settings = settings_without_mlflow(tmp_path, max_concurrent_runs=1)
    store = store_for(settings)
    service = TrainingService(settings, store, tracker=None)
    service.start()
    try:
        endless = service.submit(StartTrainingRequest.model_validate(LONG_PPO))
        next_up = service.submit(StartTrainingRequest.model_validate(TINY_PPO))
        dropped = service.submit(StartTrainingRequest.model_validate(TINY_PPO))
        assert (endless.status, next_up.status, dropped.status) == ("running", "queued", "queued")
        assert service.local_run_ids() == [endless.id]

        # A queued run stops at once and never trains.
        assert service.request_stop(dropped.id).status == RunStatus.STOPPED.value

        wait_for(store, endless.id, has_trained)
        assert store.get(next_up.id).status == RunStatus.QUEUED.value  # the cap holds while it trains

        service.request_stop(endless.id)
        stopped = wait_for(store, endless.id, has_ended, timeout_s=30)
        assert stopped.status == RunStatus.STOPPED.value and stopped.model_path is not None

        # The freed slot goes to the queued run, which trains to the end.
        done = wait_for(store, next_up.id, has_ended)
        assert done.status == RunStatus.COMPLETED.value
        assert done.timesteps == TINY_PPO["total_episodes"] * TINY_PPO["timesteps_per_episode"]
        never = store.get(dropped.id)
        assert never.status == RunStatus.STOPPED.value and never.started_at is None
        # Each thread lets go once its run is exported (after the final state that freed the slot).
        deadline = time.monotonic() + 60
        while service.local_run_ids():
            assert time.monotonic() < deadline, f"still hosted: {service.local_run_ids()}"
            time.sleep(0.2)
    finally:
        service.shutdown(timeout_s=30)


@pytest.mark.training
@pytest.mark.parametrize(
    ("kind", "engine"), [("thread", ThreadExecutor), ("process", ProcessExecutor)], ids=["thread", "process"]
)
def test_an_executor_trains_stops_and_interrupts_its_runs(
    kind: str, engine: type, tmp_path: Path, store_for: Callable[[Settings], RunStore]
) -> None:
    settings = settings_without_mlflow(tmp_path, executor=kind, max_concurrent_runs=3)
    store = store_for(settings)
    ended: list[str] = []
    executor = make_executor(settings, store, None, on_run_ended=lambda: ended.append("run"))
    assert type(executor) is engine
    assert executor.capacity() == 3
    assert (executor.cuda_unavailable() is None) == torch.cuda.is_available()
    executor.start()
    small, endless = claimed(store), claimed(store, "endless")
    assert not executor.can_resume(small)  # nothing saved yet
    try:
        executor.submit(small)
        executor.submit(endless)
        assert sorted(executor.run_ids()) == sorted([small.id, endless.id])

        done = wait_for(store, small.id, has_ended)
        assert done.status == RunStatus.COMPLETED.value
        assert done.timesteps == SMALL_RUN.total_episodes * SMALL_RUN.timesteps_per_episode
        assert executor.can_resume(done)

        # The executor's own stop path: no stop flag in the database for the job to find.
        wait_for(store, endless.id, has_trained)
        executor.request_stop(endless.id)
        stopped = wait_for(store, endless.id, has_ended, timeout_s=30)
        assert stopped.status == RunStatus.STOPPED.value and not stopped.stop_requested
        assert executor.can_resume(stopped)

        interrupted_run = claimed(store, "endless")
        executor.submit(interrupted_run)
        wait_for(store, interrupted_run.id, has_trained)
    finally:
        executor.shutdown(timeout_s=30)
    interrupted = store.get(interrupted_run.id)
    assert interrupted.status == RunStatus.INTERRUPTED.value, interrupted.error
    assert executor.run_ids() == []
    assert len(ended) == 3  # every run's end freed its slot
