"""Models of `/experiments/*` views: run summaries and pages, one run's details, metrics and files."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.policies import DEFAULT_POLICY, PolicyName
from api.schemas.common import (
    ALGORITHM,
    CREATED_AT,
    EPISODE,
    EXPERIMENT_ID,
    FINISHED_AT,
    MAZE_MODE,
    MAZE_SIZE,
    MLFLOW_RUN_ID,
    PROGRESS,
    RUN_STATUS,
    SUCCESS_RATE,
    SWEEP_ID,
    SWEEP_TRIAL,
    TOTAL_EPISODES,
    Algorithm,
    MazeMode,
    RunStatusName,
    StopReasonName,
)
from api.schemas.training import OnnxInfo, RegisteredModelInfo, TrainingStatus


class ExperimentSummary(BaseModel):
    """One run in `GET /experiments`."""

    experiment_id: str = Field(description=EXPERIMENT_ID)
    status: RunStatusName = Field(description=RUN_STATUS)
    algorithm: Algorithm = Field(description=ALGORITHM)
    maze_size: int = Field(description=MAZE_SIZE)
    maze_mode: MazeMode = Field(description=MAZE_MODE)
    policy: PolicyName = Field(DEFAULT_POLICY, description="The network the run trains (see the request).")
    episode: int = Field(description=EPISODE)
    total_episodes: int = Field(description=TOTAL_EPISODES)
    progress: float = Field(description=PROGRESS)
    success_rate: float | None = Field(description=SUCCESS_RATE)
    stop_reason: StopReasonName | None = Field(description="Why the run ended (null until it does).")
    created_at: datetime = Field(description=CREATED_AT)
    finished_at: datetime | None = Field(description=FINISHED_AT)
    mlflow_run_id: str | None = Field(description=MLFLOW_RUN_ID)
    mlflow_url: str | None = Field(description="The run in the MLflow UI, when a UI address is known.")
    name: str | None = Field(None, description="The run's name (null: none given).")
    tags: dict[str, str] = Field(default_factory=dict, description="The run's tags.")
    notes: str | None = Field(None, description="The run's notes.")
    sweep_id: str | None = Field(None, description=SWEEP_ID)
    sweep_trial: int | None = Field(None, description=SWEEP_TRIAL)


class ExperimentList(BaseModel):
    """A page of runs, newest first."""

    items: list[ExperimentSummary] = Field(description="The runs on this page.")
    total: int = Field(description="Runs matching the filters, over all pages.")
    limit: int = Field(description="Page size asked for.")
    offset: int = Field(description="Runs skipped before this page.")


class MetricPoint(BaseModel):
    """One logged value of an MLflow metric."""

    step: int = Field(description="Environment timesteps when the value was logged.")
    value: float = Field(description="The metric's value at that step.")


class ArtifactInfo(BaseModel):
    """A file the run logged to MLflow."""

    name: str = Field(description="Path inside the MLflow run's artifacts.")
    size_bytes: int | None = Field(description="File size, when MLflow reports it.")
    download_url: str | None = Field(description="Our download endpoint for it, when we serve it.")


class ExperimentDetail(ExperimentSummary):
    """Everything about one run: its record, MLflow parameters, metrics and files."""

    training: TrainingStatus = Field(description="The run's state and progress, as `GET /training/status`.")
    params: dict[str, str] = Field(
        description="MLflow parameters: every hyperparameter used, maze, versions."
    )
    metrics: dict[str, float] = Field(description="Latest value of each MLflow metric.")
    history: dict[str, list[MetricPoint]] = Field(description="reward, success_rate and loss over timesteps.")
    artifacts: list[ArtifactInfo] = Field(description="Files logged to the run's MLflow run.")
    onnx: OnnxInfo | None = Field(description="ONNX export of the trained policy, once attempted.")
    registered_model: RegisteredModelInfo | None = Field(
        None, description="The run's model in the MLflow model registry (null: no `register_as`)."
    )
    model_zip_url: str | None = Field(description="The kept model: the best held-out evaluation's.")
    last_model_zip_url: str | None = Field(
        None, description="The model at the run's last step, when it is not the kept one."
    )
    mlflow_error: str | None = Field(None, description="Why MLflow data is missing, if it is.")
    notify_url: str | None = Field(None, description="Where the final status is POSTed (null: nowhere).")
    notify_state: Literal["pending", "sending", "sent", "failed"] | None = Field(
        None,
        description="The end-of-run notification: 'pending' until the run ends, then 'sending', and "
        "'sent' or 'failed' (every retry failed); null without a notify_url.",
    )


class LogRecord(BaseModel):
    """One structured log record the service wrote about a run."""

    model_config = ConfigDict(extra="allow")

    timestamp: str | None = Field(None, description="When (ISO 8601, UTC).")
    level: str | None = Field(None, description="debug, info, warning, error or critical.")
    event: str = Field(description="What happened, as a snake_case name; other keys give details.")


class RunLogs(BaseModel):
    """A run's log records, oldest first (the newest last)."""

    experiment_id: str = Field(description=EXPERIMENT_ID)
    records: list[LogRecord] = Field(description="The last `limit` records, in the order written.")
    truncated: bool = Field(description="Older records exist beyond `limit`.")
