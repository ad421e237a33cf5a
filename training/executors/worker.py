"""Train one run in a process other than the service's (a child process, a Ray worker).

Such a process opens its own database engine and MLflow client; every training process builds its
MLflow client the same way, here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from core.settings import Settings
from mlflow_client import Tracker, is_tracking_server
from records.database import create_db_engine, make_session_factory
from records.store import RunStore
from records.tables import RunStatus
from training.job import JobControl, TrainingJob


def train_run(
    settings: Settings,
    run_id: str,
    control: JobControl,
    artifact_dir: Path | None,
    tracking_flush_s: float,
    closing: threading.Event | None = None,
    artifacts_must_reach_store: bool = False,
) -> RunStatus:
    """Train the claimed run `run_id` to its final state with this process's own connections.

    :param control: the hosting process's stop handle.
    :param artifact_dir: where new MLflow experiments keep artifacts (`tracker_artifact_dir`).
    :param tracking_flush_s: at the end, how long to wait for MLflow uploads still in flight.
    :param closing: set when this process is going away (final-state retries then give up).
    :param artifacts_must_reach_store: see `TrainingJob`.
    """
    torch.set_num_threads(settings.torch_threads)
    engine = create_db_engine(settings.database_url)
    store = RunStore(make_session_factory(engine))
    tracker = make_tracker(settings, store, artifact_dir) if settings.mlflow_enabled else None
    try:
        job = TrainingJob(
            settings,
            store,
            tracker,
            store.get(run_id),
            control,
            closing,
            artifacts_must_reach_store=artifacts_must_reach_store,
        )
        return job.execute()
    finally:
        if tracker is not None:
            tracker.close(tracking_flush_s)
        engine.dispose()


def tracker_artifact_dir(settings: Settings) -> Path | None:
    """Where new MLflow experiments keep artifacts: a tracking server decides (None), reachable from
    every machine; a local store uses the service's directory, so every process writes to one place."""
    if is_tracking_server(settings.mlflow_tracking_uri):
        return None
    return settings.mlflow_artifacts_dir.resolve()


def make_tracker(settings: Settings, store: RunStore, artifact_dir: Path | None) -> Tracker:
    """The MLflow client of a process that trains runs, reporting its runs' MLflow ids, tracking
    health and model registrations to their records."""
    return Tracker(
        settings.mlflow_tracking_uri,
        settings.mlflow_experiment_name,
        artifact_dir=artifact_dir,
        on_run_created=store.record_mlflow_run,
        on_tracking_status=store.record_tracking_status,
        on_registration=store.record_registration,
    )
