"""FastAPI dependencies as types, so a route's signature says what it needs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from run_store import RunStore
from settings import Settings
from training_service import TrainingService


def get_service(request: Request) -> TrainingService:
    service: TrainingService = request.app.state.training_service
    return service


def get_store(request: Request) -> RunStore:
    store: RunStore = request.app.state.run_store
    return store


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


ServiceDep = Annotated[TrainingService, Depends(get_service)]
StoreDep = Annotated[RunStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
