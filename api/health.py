"""`/health`: is this worker, its database and its MLflow store usable?"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.deps import MlflowRunsDep, ServiceDep, StoreDep
from api.schemas import HealthComponent, HealthResponse
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


@router.get("/health", response_model=HealthResponse, summary="Liveness and dependency reachability")
async def health(store: StoreDep, service: ServiceDep, mlflow_runs: MlflowRunsDep) -> HealthResponse:
    """Always answers 200 while the process serves; `status` is `degraded` when a dependency is down."""
    database = await run_in_threadpool(_database_health, store)
    ok, detail = await run_in_threadpool(mlflow_runs.check_store)
    mlflow = HealthComponent(ok=ok, detail=detail)
    return HealthResponse(
        status="ok" if database.ok and mlflow.ok else "degraded",
        database=database,
        mlflow=mlflow,
        runs_training_here=len(service.local_run_ids()),
        worker=service.owner,
        mlflow_experiment_id=mlflow_runs.cached_experiment_id(),
    )
