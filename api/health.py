"""`/health`: is this worker, its database, its data directory and its MLflow store usable?"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.deps import MlflowRunsDep, ServiceDep, SettingsDep, StoreDep
from api.schemas import DataDirHealth, HealthComponent, HealthResponse
from core.errors import describe

router = APIRouter(tags=["health"])


def _database_health(store: StoreDep) -> HealthComponent:
    try:
        store.ping()
    except Exception as error:
        return HealthComponent(ok=False, detail=f"database unreachable: {describe(error)}")
    try:
        store.check_writable()
    except Exception as error:
        # Reads still work, but runs cannot start and running jobs wait to record their progress.
        return HealthComponent(ok=False, detail=f"database cannot be written: {describe(error)}")
    return HealthComponent(ok=True, detail="database reachable")


def _data_dir_health(data_dir: Path, min_free_bytes: int) -> DataDirHealth:
    """Write a small file in the data directory (a read-only mount or a full disk fails it, as it fails
    checkpoints and model saves) and read its free space."""
    try:
        free: int | None = shutil.disk_usage(data_dir).free
    except OSError:
        free = None
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".health-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as error:
        detail = f"data directory cannot be written: {describe(error)}"
        return DataDirHealth(ok=False, detail=detail, writable=False, free_bytes=free)
    if free is not None and free < min_free_bytes:
        detail = f"data directory has {free} bytes free, less than DATA_DIR_MIN_FREE_MB"
        return DataDirHealth(ok=False, detail=detail, writable=True, free_bytes=free)
    return DataDirHealth(ok=True, detail="data directory writable", writable=True, free_bytes=free)


@router.get("/health", response_model=HealthResponse, summary="Liveness and dependency reachability")
async def health(
    store: StoreDep, service: ServiceDep, mlflow_runs: MlflowRunsDep, settings: SettingsDep
) -> HealthResponse:
    """Always answers 200 while the process serves; `status` is `degraded` when a dependency is down
    or the data directory cannot take writes (checkpoints then wait for it: see README "Reliability")."""
    database = await run_in_threadpool(_database_health, store)
    data_dir = await run_in_threadpool(
        _data_dir_health, settings.data_dir, settings.data_dir_min_free_mb * 1024 * 1024
    )
    ok, detail = await run_in_threadpool(mlflow_runs.check_store)
    mlflow = HealthComponent(ok=ok, detail=detail)
    return HealthResponse(
        status="ok" if database.ok and mlflow.ok and data_dir.ok else "degraded",
        database=database,
        mlflow=mlflow,
        data_dir=data_dir,
        runs_training_here=len(service.local_run_ids()),
        worker=service.owner,
        mlflow_experiment_id=mlflow_runs.cached_experiment_id(),
    )
