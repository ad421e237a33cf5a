"""Models of `GET /health`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class HealthComponent(BaseModel):
    """Whether one dependency is usable."""

    ok: bool = Field(description="It answered.")
    detail: str = Field(description="What was checked, or the error.")


class DataDirHealth(HealthComponent):
    """Whether the data directory (models, checkpoints) takes writes and has room for them."""

    writable: bool = Field(description="A file could be created and written in DATA_DIR just now.")
    free_bytes: int | None = Field(description="Free space in DATA_DIR; null when it cannot be read.")


class HealthResponse(BaseModel):
    """Answer to `GET /health`."""

    status: Literal["ok", "degraded"] = Field(
        description="'degraded' when a dependency is unreachable or the data directory is not usable."
    )
    database: HealthComponent = Field(description="The run database.")
    mlflow: HealthComponent = Field(description="The MLflow tracking store.")
    data_dir: DataDirHealth = Field(
        description="DATA_DIR: not ok when it cannot be written or has less free space than "
        "DATA_DIR_MIN_FREE_MB."
    )
    runs_training_here: int = Field(description="Runs this worker process trains (or watches) now.")
    worker: str = Field(description="This worker's identity (host and process id).")
    mlflow_experiment_id: str | None = Field(
        None,
        description="The MLflow experiment this worker tracks runs in, once set up (in the background "
        "after start-up); null until then. A run started before has its MLflow run created when it is.",
    )
