"""FastAPI dependencies as types, so a route's signature says what it needs.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, and each such
hop must win the GIL back from the training threads (measured: most of a status request's cost).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from core.settings import Settings
from records.experiments import Experiments
from records.mlflow_runs import MlflowRuns
from records.status_cache import StatusCache
from records.store import RunStore
from training_service import TrainingService


async def get_service(request: Request) -> TrainingService:
    service: TrainingService = request.app.state.training_service
    return service


async def get_store(request: Request) -> RunStore:
    store: RunStore = request.app.state.run_store
    return store


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_experiments(request: Request) -> Experiments:
    experiments: Experiments = request.app.state.experiments
    return experiments


async def get_mlflow_runs(request: Request) -> MlflowRuns:
    mlflow_runs: MlflowRuns = request.app.state.mlflow_runs
    return mlflow_runs


async def get_status_cache(request: Request) -> StatusCache:
    cache: StatusCache = request.app.state.status_cache
    return cache


ServiceDep = Annotated[TrainingService, Depends(get_service)]
StoreDep = Annotated[RunStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StatusCacheDep = Annotated[StatusCache, Depends(get_status_cache)]
ExperimentsDep = Annotated[Experiments, Depends(get_experiments)]
MlflowRunsDep = Annotated[MlflowRuns, Depends(get_mlflow_runs)]
