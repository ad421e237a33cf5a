"""Pydantic models for every request and response of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from agents.hyperparameters import HYPERPARAMETER_MODELS, MAX_TIMESTEPS_PER_EPISODE
from maze_env import MAX_MAZE_SIZE, MIN_MAZE_SIZE

Algorithm = Literal["PPO", "DQN"]
MazeMode = Literal["random", "fixed"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
RunStatusName = Literal["queued", "running", "completed", "failed", "stopped", "interrupted"]
StopReasonName = Literal[
    "target_reached", "budget_exhausted", "no_improvement", "stopped", "interrupted", "failed"
]

MAX_TOTAL_EPISODES = 1_000_000
MAX_N_ENVS = 64
MAX_EVAL_EPISODES = 5000


class _Strict(BaseModel):
    # strict: no `true` or "10" for an integer. No NaN or ±Infinity: Infinity passes a bound like `gt=0`,
    # and neither has a JSON form to echo back in a 422.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _describe_errors(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "hyperparameters"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


class StartTrainingRequest(_Strict):
    """Body of `POST /training/start`; only the first four fields are required."""

    algorithm: Algorithm = Field(description="Stable-Baselines3 algorithm to train.")
    total_episodes: int = Field(
        ge=1, le=MAX_TOTAL_EPISODES, description="Training iterations; budget = this × timesteps_per_episode."
    )
    timesteps_per_episode: int = Field(
        ge=1, le=MAX_TIMESTEPS_PER_EPISODE, description="Environment steps per training iteration."
    )
    maze_size: int = Field(ge=MIN_MAZE_SIZE, le=MAX_MAZE_SIZE, description="Maze cells per side.")
    seed: int | None = Field(
        None, ge=0, le=2**31 - 1, description="Seed for mazes and training; random if omitted."
    )
    maze_mode: MazeMode = Field(
        "random", description="'random': a new maze every episode; 'fixed': one maze."
    )
    n_envs: int | None = Field(
        None, ge=1, le=MAX_N_ENVS, description="Parallel environments; per-algorithm default."
    )
    device: DeviceChoice = Field("auto", description="'auto' uses CUDA when the server has it.")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-algorithm overrides of Stable-Baselines3 constructor arguments.",
    )
    target_success_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="End the run `completed` as soon as the held-out success rate reaches this "
        "(`patience` evaluations in a row); omitted: train the whole budget.",
    )
    eval_every_episodes: int | None = Field(
        None,
        ge=1,
        le=MAX_TOTAL_EPISODES,
        description="Evaluate every this many training iterations; omitted: adaptive, so that "
        "evaluation takes at most ~10% of the run's time.",
    )
    eval_episodes: int | None = Field(
        None,
        ge=1,
        le=MAX_EVAL_EPISODES,
        description="Held-out mazes per evaluation (random mode); default: the server's EVAL_EPISODES.",
    )
    patience: int = Field(
        1, ge=1, le=1000, description="Consecutive evaluations at the target that end the run."
    )
    max_evals_without_improvement: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="End the run `completed` (stop_reason `no_improvement`) after this many "
        "evaluations in a row without a new best; omitted: never.",
    )

    @field_validator("algorithm", mode="before")
    @classmethod
    def _upper_algorithm(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("hyperparameters")
    @classmethod
    def _check_hyperparameters(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        algorithm = info.data.get("algorithm")
        if algorithm is None or not value:
            return value
        model = HYPERPARAMETER_MODELS[algorithm]
        try:
            parsed = TypeAdapter(model).validate_python(value)
        except ValidationError as error:
            accepted = ", ".join(model.model_fields)
            raise ValueError(f"{_describe_errors(error)} (accepted for {algorithm}: {accepted})") from None
        return parsed.model_dump(exclude_none=True)

    @property
    def total_timesteps(self) -> int:
        return self.total_episodes * self.timesteps_per_episode


class StartTrainingResponse(BaseModel):
    experiment_id: str
    status: Literal["started"] = "started"
    run_status: RunStatusName = Field(
        description="'running' at once, or 'queued' behind the concurrency cap."
    )


class TrainingStatus(BaseModel):
    """A run's state and latest progress, as stored in the database."""

    experiment_id: str
    status: RunStatusName
    algorithm: Algorithm
    maze_size: int
    maze_mode: MazeMode
    seed: int
    n_envs: int
    device: str | None = Field(description="Device training runs on (None until it starts).")
    episode: int = Field(description="Training iterations done (each `timesteps_per_episode` steps).")
    total_episodes: int
    timesteps: int
    total_timesteps: int
    progress: float = Field(description="timesteps / total_timesteps, 0..1.")
    maze_episodes: int = Field(description="Maze episodes finished during training.")
    reward: float | None = Field(description="Mean reward of the last 100 maze episodes.")
    success_rate: float | None = Field(
        description="Rolling training success rate; the held-out evaluation success rate once the run ends."
    )
    eval_success_rate: float | None = Field(
        None,
        description="Held-out success rate of the latest evaluation; once the run ends, of the kept model.",
    )
    eval_path_efficiency: float | None = Field(
        None, description="Held-out path efficiency, as eval_success_rate."
    )
    eval_timesteps: int | None = Field(None, description="Timestep of the latest held-out evaluation.")
    best_eval_success_rate: float | None = Field(
        None, description="Best held-out success rate so far: the model kept as model.zip."
    )
    best_eval_path_efficiency: float | None = Field(None, description="Path efficiency of that evaluation.")
    best_eval_timesteps: int | None = Field(None, description="Timestep of the best evaluation.")
    target_success_rate: float | None = None
    stop_reason: StopReasonName | None = Field(None, description="Why the run ended (None until it does).")
    loss: float | None = None
    fps: float | None = Field(description="Environment steps per second.")
    elapsed_s: float | None = None
    eta_s: float | None = Field(description="Estimated seconds left, from the current fps.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None = Field(description="When the latest progress snapshot was written.")
    stop_requested: bool
    error: str | None = None
    model_available: bool = Field(description="A trained SB3 model has been saved for this run.")
    mlflow_run_id: str | None = None
    tracking_status: Literal["ok", "degraded"] | None = Field(
        None, description="'degraded' while MLflow is unreachable and logging is buffered for retry."
    )
    tracking_error: str | None = None
    onnx: OnnxInfo | None = Field(None, description="ONNX export of the trained policy, once attempted.")


class OnnxInfo(BaseModel):
    status: Literal["pending", "exported", "failed"]
    download_url: str | None = Field(description="GET it for the ONNX file (when exported).")
    size_bytes: int | None = None
    opset: int | None = None
    export_seconds: float | None = Field(None, description="Export plus verification time.")
    parity_passed: bool | None = Field(None, description="onnxruntime matched torch on ≥ 1,000 observations.")
    error: str | None = None


class ExperimentSummary(BaseModel):
    experiment_id: str
    status: RunStatusName
    algorithm: Algorithm
    maze_size: int
    maze_mode: MazeMode
    episode: int
    total_episodes: int
    progress: float
    success_rate: float | None
    stop_reason: StopReasonName | None
    created_at: datetime
    finished_at: datetime | None
    mlflow_run_id: str | None
    mlflow_url: str | None = Field(description="The run in the MLflow UI, when a UI address is known.")


class ExperimentList(BaseModel):
    items: list[ExperimentSummary]
    total: int
    limit: int
    offset: int


class MetricPoint(BaseModel):
    step: int = Field(description="Environment timesteps when the value was logged.")
    value: float


class ArtifactInfo(BaseModel):
    name: str = Field(description="Path inside the MLflow run's artifacts.")
    size_bytes: int | None
    download_url: str | None = Field(description="Our download endpoint for it, when we serve it.")


class ExperimentDetail(ExperimentSummary):
    training: TrainingStatus
    params: dict[str, str] = Field(
        description="MLflow parameters: every hyperparameter used, maze, versions."
    )
    metrics: dict[str, float] = Field(description="Latest value of each MLflow metric.")
    history: dict[str, list[MetricPoint]] = Field(description="reward, success_rate and loss over timesteps.")
    artifacts: list[ArtifactInfo]
    onnx: OnnxInfo | None
    model_zip_url: str | None = Field(description="The kept model: the best held-out evaluation's.")
    last_model_zip_url: str | None = Field(
        None, description="The model at the run's last step, when it is not the kept one."
    )
    mlflow_error: str | None = Field(None, description="Why MLflow data is missing, if it is.")


class ErrorMessage(BaseModel):
    """Body of 4xx/5xx answers other than 422."""

    detail: str


class StopTrainingResponse(BaseModel):
    experiment_id: str
    status: RunStatusName
    message: str


class HealthComponent(BaseModel):
    ok: bool
    detail: str


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    database: HealthComponent
    mlflow: HealthComponent
    runs_training_here: int
    worker: str
    mlflow_experiment_id: str | None = Field(
        None,
        description="The MLflow experiment this worker tracks runs in, once set up (in the background "
        "after start-up); null until then. A run started before has its MLflow run created when it is.",
    )


class RolloutRequest(_Strict):
    maze_seed: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="Maze to play; default: a fixed-mode run's own maze, else random.",
    )


# A square as [row, col]. A 2-item list rather than a tuple: a tuple becomes `prefixItems` in OpenAPI 3.1,
# which many client generators and fuzzers mishandle.
Square = Annotated[list[int], Field(min_length=2, max_length=2, description="[row, col]")]


class RolloutResponse(BaseModel):
    maze_size: int
    maze_seed: int
    grid: list[list[int]] = Field(description="(2N+1) × (2N+1) squares: 0 open, 1 wall.")
    start: Square
    goal: Square
    path: list[Square] = Field(description="Every square the agent occupied, from start.")
    success: bool
    steps: int = Field(description="Actions taken (one action moves one cell, i.e. two squares).")
    shortest_path_steps: int = Field(description="Actions on a shortest path.")


class EvaluateRequest(_Strict):
    episodes: int = Field(100, ge=1, le=MAX_EVAL_EPISODES, description="Held-out evaluation mazes to play.")


class EvaluateResponse(BaseModel):
    experiment_id: str
    episodes: int
    success_rate: float
    path_efficiency: float = Field(description="Mean of shortest-path steps / steps taken (0 for failures).")
    mean_steps: float
