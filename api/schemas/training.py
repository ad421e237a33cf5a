"""Models of `/training/*`: the start request (with its examples and hyperparameter schema), status
and the answers to start, stop and resume."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from agents.hyperparameters import (
    HYPERPARAMETER_MODELS,
    MAX_TIMESTEPS_PER_EPISODE,
    default_hyperparameters,
)
from agents.policies import DEFAULT_POLICY, PolicyName
from api.schemas.common import (
    ALGORITHM,
    CREATED_AT,
    EXPERIMENT_ID,
    FINISHED_AT,
    MAX_EVAL_EPISODES,
    MAX_N_ENVS,
    MAX_TOTAL_EPISODES,
    MAZE_MODE,
    MAZE_SIZE,
    MLFLOW_RUN_ID,
    RUN_STATUS,
    SWEEP_ID,
    SWEEP_TRIAL,
    TOTAL_EPISODES,
    Algorithm,
    DeviceChoice,
    MazeMode,
    RunStatusName,
    StopReasonName,
    Strict,
)
from api.schemas.labels import (
    MAX_TAGS,
    NAME_DESCRIPTION,
    NOTES_DESCRIPTION,
    TAGS_DESCRIPTION,
    Notes,
    RunName,
    TagKey,
    TagValue,
    check_notify_url,
    check_tag_keys,
    strict_tag_keys,
)
from mazes.grid import MAX_MAZE_SIZE, MIN_MAZE_SIZE

# The seed's request, and a DQN one with hyperparameters (shown and sent by /docs "Try it out").
START_EXAMPLES: list[JsonValue] = [
    {"algorithm": "PPO", "total_episodes": 1000, "timesteps_per_episode": 2048, "maze_size": 10},
    {
        "algorithm": "DQN",
        "total_episodes": 50,
        "timesteps_per_episode": 2000,
        "maze_size": 8,
        "seed": 42,
        "maze_mode": "fixed",
        "hyperparameters": {"learning_rate": 0.0005, "exploration_fraction": 0.3},
    },
]


# A registered model name that every MLflow registry takes (no '/' or ':', which MLflow refuses; dots allow
# Unity Catalog's catalog.schema.model), and safe in a registry search filter (no quotes or spaces).
MAX_REGISTERED_MODEL_NAME_LENGTH = 128
REGISTERED_MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
RegisteredModelName = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=MAX_REGISTERED_MODEL_NAME_LENGTH, pattern=REGISTERED_MODEL_NAME_PATTERN
    ),
]


def _hyperparameters_schema(schema: dict[str, Any]) -> None:
    """The `hyperparameters` field's JSON schema: one of the algorithms' override models, every key
    described with its Stable-Baselines3 name and our default."""
    options = []
    for algorithm, model in HYPERPARAMETER_MODELS.items():
        option = model.model_json_schema()
        defaults = default_hyperparameters(algorithm, MIN_MAZE_SIZE)
        for key, field_schema in option["properties"].items():
            default = DERIVED_DEFAULTS.get((algorithm, key), defaults.get(key, "Stable-Baselines3's"))
            field_schema["description"] = f"{algorithm}({key}=…); default here: {default}."
        options.append(option)
    schema.pop("additionalProperties", None)
    schema.pop("type", None)
    schema["anyOf"] = options


# Defaults that are not constants (see agents/hyperparameters.py merged_hyperparameters).
DERIVED_DEFAULTS = {
    ("PPO", "n_steps"): "timesteps_per_episode // n_envs",
    ("PPO", "batch_size"): "256, at most n_steps × n_envs",
}


def _describe_errors(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "hyperparameters"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


class StartTrainingRequest(Strict):
    """Body of `POST /training/start`; only the first four fields are required."""

    model_config = ConfigDict(json_schema_extra={"examples": START_EXAMPLES})

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
    policy: PolicyName = Field(
        DEFAULT_POLICY,
        description="The network: 'planner' (value iteration with a hand-set goal prior, frozen; RL learns "
        "the heads), 'planner_learned' (the same network, randomly initialised and all trained), 'cnn' "
        "(a small NatureCNN-style convolutional net), 'mlp' (SB3's default MLP). See the README.",
    )
    # Validated by `_check_hyperparameters` against the algorithm's model (its messages list the accepted
    # keys); the schema shows every algorithm's keys.
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-algorithm overrides of Stable-Baselines3 constructor arguments: the keys of "
        "PPOHyperparameters or DQNHyperparameters, matching `algorithm`.",
        json_schema_extra=lambda schema: _hyperparameters_schema(schema),
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
    name: RunName | None = Field(None, description=NAME_DESCRIPTION)
    tags: dict[TagKey, TagValue] = Field(
        default_factory=dict,
        max_length=MAX_TAGS,
        description=TAGS_DESCRIPTION,
        json_schema_extra=strict_tag_keys(MAX_TAGS),
    )
    notes: Notes | None = Field(None, description=NOTES_DESCRIPTION)
    notify_url: str | None = Field(
        None,
        description="An http(s) URL that receives one POST (JSON: the run's final status, as "
        "`GET /training/status`) when the run ends; retried with back-off on failure.",
        examples=["https://hooks.example.com/maze-runs"],
    )

    register_as: RegisteredModelName | None = Field(
        None,
        description="Register the run's ONNX model in the MLflow model registry under this name (a new "
        "version of it), with its held-out success rate as a model metric: "
        f"1–{MAX_REGISTERED_MODEL_NAME_LENGTH} characters of A–Z a–z 0–9 _ . -, starting with a letter "
        "or digit. Needs MLflow. A registry failure never fails the run: status `registered_model` "
        "says what happened.",
        examples=["maze-ppo"],
    )

    @field_validator("tags")
    @classmethod
    def _no_reserved_tags(cls, value: dict[str, str]) -> dict[str, str]:
        check_tag_keys(list(value))
        return value

    @field_validator("notify_url")
    @classmethod
    def _check_notify_url(cls, value: str | None) -> str | None:
        return None if value is None else check_notify_url(value)

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
    """Answer to `POST /training/start`."""

    experiment_id: str = Field(description="The new run's id (a UUID); use it in every other call.")
    status: Literal["started"] = Field("started", description="Always 'started': the run was accepted.")
    run_status: RunStatusName = Field(
        description="'running' at once, or 'queued' behind the concurrency cap."
    )


class TrainingStatus(BaseModel):
    """A run's state and latest progress, as stored in the database."""

    experiment_id: str = Field(description=EXPERIMENT_ID)
    status: RunStatusName = Field(description=RUN_STATUS)
    algorithm: Algorithm = Field(description=ALGORITHM)
    maze_size: int = Field(description=MAZE_SIZE)
    maze_mode: MazeMode = Field(description=MAZE_MODE)
    seed: int = Field(description="Seed of the run's mazes and training (the one given, or the one drawn).")
    policy: PolicyName = Field(DEFAULT_POLICY, description="The network the run trains (see the request).")
    n_envs: int = Field(description="Parallel environments the run trains with.")
    device: str | None = Field(description="Device training runs on (None until it starts).")
    episode: int = Field(description="Training iterations done (each `timesteps_per_episode` steps).")
    total_episodes: int = Field(description=TOTAL_EPISODES)
    timesteps: int = Field(description="Environment steps trained so far.")
    total_timesteps: int = Field(description="The step budget: total_episodes × timesteps_per_episode.")
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
    target_success_rate: float | None = Field(
        None, description="The held-out success rate at which the run ends early (null: none)."
    )
    stop_reason: StopReasonName | None = Field(None, description="Why the run ended (None until it does).")
    loss: float | None = Field(None, description="Latest training loss (PPO: total loss; DQN: TD loss).")
    fps: float | None = Field(description="Environment steps per second.")
    elapsed_s: float | None = Field(None, description="Seconds spent training so far.")
    eta_s: float | None = Field(description="Estimated seconds left, from the current fps.")
    created_at: datetime = Field(description=CREATED_AT)
    started_at: datetime | None = Field(description="When training began (null while queued).")
    finished_at: datetime | None = Field(description=FINISHED_AT)
    updated_at: datetime | None = Field(description="When the latest progress snapshot was written.")
    stop_requested: bool = Field(description="A stop was asked for; the run saves its model and ends.")
    error: str | None = Field(None, description="Why the run failed (null unless it failed).")
    model_available: bool = Field(description="A trained SB3 model has been saved for this run.")
    mlflow_run_id: str | None = Field(None, description=MLFLOW_RUN_ID)
    tracking_status: Literal["ok", "degraded"] | None = Field(
        None, description="'degraded' while MLflow is unreachable and logging is buffered for retry."
    )
    tracking_error: str | None = Field(None, description="The MLflow error while tracking is degraded.")
    onnx: OnnxInfo | None = Field(None, description="ONNX export of the trained policy, once attempted.")
    sweep_id: str | None = Field(None, description=SWEEP_ID)
    sweep_trial: int | None = Field(None, description=SWEEP_TRIAL)
    registered_model: RegisteredModelInfo | None = Field(
        None, description="The run's model in the MLflow model registry (null: no `register_as`)."
    )


class RegisteredModelInfo(BaseModel):
    """Where a run's ONNX model stands in the MLflow model registry (`register_as`)."""

    name: str = Field(description="The registered model name asked for at start.")
    status: Literal["pending", "registered", "failed"] = Field(
        description="'pending' until the run's ONNX model is logged to MLflow and registered; then "
        "'registered', or 'failed' (the run itself is not affected; `error` says why)."
    )
    version: int | None = Field(None, description="The model version registered for this run (latest).")
    error: str | None = Field(None, description="Why the registration failed.")


class OnnxInfo(BaseModel):
    """The ONNX export of a run's trained policy."""

    status: Literal["pending", "exported", "failed"] = Field(
        description="'pending' until the run has ended and the export ran; then 'exported' or 'failed'."
    )
    download_url: str | None = Field(description="GET it for the ONNX file (when exported).")
    size_bytes: int | None = Field(None, description="Size of the ONNX file.")
    opset: int | None = Field(None, description="ONNX opset the model was exported with.")
    export_seconds: float | None = Field(None, description="Export plus verification time.")
    parity_passed: bool | None = Field(None, description="onnxruntime matched torch on ≥ 1,000 observations.")
    error: str | None = Field(None, description="Why the export or its verification failed.")


class StopTrainingResponse(BaseModel):
    """Answer to `POST /training/stop` and `/training/resume`."""

    experiment_id: str = Field(description=EXPERIMENT_ID)
    status: RunStatusName = Field(description="The run's state when the answer was given.")
    message: str = Field(description="What happened, in words.")
