"""Pydantic models for every request and response of the HTTP API, one module per resource.

Importers may name the module (`api.schemas.training`) or this package: every model is re-exported here.
"""

from api.schemas.common import (
    Algorithm,
    DeviceChoice,
    ErrorMessage,
    MazeMode,
    RunStatusName,
    StopReasonName,
)
from api.schemas.experiments import (
    ArtifactInfo,
    ExperimentDetail,
    ExperimentList,
    ExperimentSummary,
    LogRecord,
    MetricPoint,
    RunLogs,
)
from api.schemas.health import DataDirHealth, HealthComponent, HealthResponse
from api.schemas.players import EvaluateRequest, EvaluateResponse, RolloutRequest, RolloutResponse
from api.schemas.training import (
    START_EXAMPLES,
    OnnxInfo,
    RegisteredModelInfo,
    StartTrainingRequest,
    StartTrainingResponse,
    StopTrainingResponse,
    TrainingStatus,
)

__all__ = [
    "START_EXAMPLES",
    "Algorithm",
    "ArtifactInfo",
    "DataDirHealth",
    "DeviceChoice",
    "ErrorMessage",
    "EvaluateRequest",
    "EvaluateResponse",
    "ExperimentDetail",
    "ExperimentList",
    "ExperimentSummary",
    "HealthComponent",
    "HealthResponse",
    "LogRecord",
    "MazeMode",
    "MetricPoint",
    "OnnxInfo",
    "RegisteredModelInfo",
    "RolloutRequest",
    "RolloutResponse",
    "RunLogs",
    "RunStatusName",
    "StartTrainingRequest",
    "StartTrainingResponse",
    "StopReasonName",
    "StopTrainingResponse",
    "TrainingStatus",
]
