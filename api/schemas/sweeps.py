"""Pydantic models of the `/sweeps` requests and responses."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo

from agents.hyperparameters import HYPERPARAMETER_MODELS, MAX_TIMESTEPS_PER_EPISODE
from agents.policies import DEFAULT_POLICY, PolicyName
from api.schemas.common import (
    MAX_EVAL_EPISODES,
    MAX_N_ENVS,
    MAX_TOTAL_EPISODES,
    Algorithm,
    DeviceChoice,
    MazeMode,
)
from mazes.grid import MAX_MAZE_SIZE, MIN_MAZE_SIZE

MAX_TRIALS = 1000
MAX_PARALLEL_TRIALS = 64

SweepStatusName = Literal["running", "stopping", "completed", "stopped"]
TrialStateName = Literal["running", "complete", "pruned", "fail", "waiting"]


LOW = "Smallest value drawn."
HIGH = "Largest value drawn."


class _Strict(BaseModel):
    # As the training request: no `true` or "10" for an integer, no NaN or ±Infinity.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class LogUniform(_Strict):
    """Floats whose logarithm is uniform in [log(low), log(high)] (learning rates, coefficients)."""

    type: Literal["log_uniform"] = Field(description="'log_uniform'.")
    low: float = Field(gt=0, description=LOW)
    high: float = Field(gt=0, description=HIGH)


class Uniform(_Strict):
    """Floats uniform in [low, high]."""

    type: Literal["uniform"] = Field(description="'uniform'.")
    low: float = Field(description=LOW)
    high: float = Field(description=HIGH)


class IntRange(_Strict):
    """Integers in [low, high]; `log: true` samples their logarithm uniformly (low ≥ 1)."""

    type: Literal["int"] = Field(description="'int'.")
    low: int = Field(description=LOW)
    high: int = Field(description=HIGH)
    log: bool = Field(False, description="Sample the logarithm uniformly.")


class Categorical(_Strict):
    """One of the listed values."""

    type: Literal["categorical"] = Field(description="'categorical'.")
    choices: list[int | float | str | bool] = Field(
        min_length=1, max_length=100, description="The values to choose from."
    )


Distribution = Annotated[LogUniform | Uniform | IntRange | Categorical, Field(discriminator="type")]


class PrunerRequest(_Strict):
    """Optuna's median pruner on the trials' periodic held-out evaluations."""

    enabled: bool = Field(True, description="false: every trial trains its whole budget.")
    n_startup_trials: int = Field(
        5, ge=0, le=MAX_TRIALS, description="No pruning until this many trials have completed."
    )
    n_warmup_evaluations: int = Field(
        1, ge=0, le=10_000, description="A trial is never pruned at its first this many evaluations."
    )


class SweepRequest(_Strict):
    """Body of `POST /sweeps`: one run request for every trial, and what to vary."""

    algorithm: Algorithm = Field(description="Stable-Baselines3 algorithm every trial trains.")
    maze_size: int = Field(ge=MIN_MAZE_SIZE, le=MAX_MAZE_SIZE, description="Maze cells per side.")
    maze_mode: MazeMode = Field(
        "random", description="'random': a new maze every episode; 'fixed': one maze."
    )
    total_episodes: int = Field(ge=1, le=MAX_TOTAL_EPISODES, description="Each trial's training iterations.")
    timesteps_per_episode: int = Field(
        ge=1, le=MAX_TIMESTEPS_PER_EPISODE, description="Environment steps per training iteration."
    )
    n_trials: int = Field(ge=1, le=MAX_TRIALS, description="Trials to run in all.")
    parallel_trials: int = Field(
        1, ge=1, le=MAX_PARALLEL_TRIALS, description="At most this many trials queued or training at once."
    )
    search_space: dict[str, Distribution] | None = Field(
        None,
        min_length=1,
        description="Distribution per hyperparameter (keys as in `hyperparameters` of /training/start); "
        "omitted: the algorithm's default space (README 'Sweeps').",
    )
    pruner: PrunerRequest = Field(default_factory=PrunerRequest, description="When trials are pruned.")
    seed: int | None = Field(
        None, ge=0, le=2**31 - 1, description="Seed of every trial's mazes and training; random if omitted."
    )
    n_envs: int | None = Field(None, ge=1, le=MAX_N_ENVS, description="Parallel environments per trial.")
    device: DeviceChoice = Field("auto", description="'auto' uses CUDA when the server has it.")
    policy: PolicyName = Field(
        DEFAULT_POLICY,
        description="The network every trial trains, as `policy` of /training/start (README 'Policies').",
    )
    eval_every_episodes: int | None = Field(
        None,
        ge=1,
        le=MAX_TOTAL_EPISODES,
        description="Evaluate every trial every this many iterations (the same steps for all, which the "
        "pruner compares); omitted: total_episodes / 10, at least 1.",
    )
    eval_episodes: int | None = Field(
        None, ge=1, le=MAX_EVAL_EPISODES, description="Held-out mazes per evaluation (random mode)."
    )
    target_success_rate: float | None = Field(
        None, gt=0, le=1, description="A trial ends `completed` as soon as its held-out success reaches this."
    )

    @field_validator("algorithm", mode="before")
    @classmethod
    def _upper_algorithm(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("search_space")
    @classmethod
    def _check_search_space(
        cls, value: dict[str, Distribution] | None, info: ValidationInfo
    ) -> dict[str, Distribution] | None:
        algorithm = info.data.get("algorithm")
        if value is None or algorithm is None:
            return value
        if not value:
            raise ValueError("must name at least one hyperparameter (or be omitted for the default space)")
        model = HYPERPARAMETER_MODELS[algorithm]
        for key, spec in value.items():
            if key not in model.model_fields:
                accepted = ", ".join(model.model_fields)
                raise ValueError(f"{key}: not a {algorithm} hyperparameter (accepted: {accepted})")
            _check_distribution(model, key, model.model_fields[key], spec)
        return value


def _check_distribution(model: type[BaseModel], key: str, field: FieldInfo, spec: Distribution) -> None:
    """Every value `spec` can draw must be accepted for `key`: its bounds, or each choice."""
    if isinstance(spec, Categorical):
        values: list[Any] = list(spec.choices)
    else:
        if spec.low > spec.high:
            raise ValueError(f"{key}: low ({spec.low}) must not exceed high ({spec.high})")
        if isinstance(spec, IntRange) and spec.log and spec.low < 1:
            raise ValueError(f"{key}: a log-scale int range needs low ≥ 1")
        if not isinstance(spec, IntRange) and "int" in str(field.annotation):
            raise ValueError(f"{key}: takes integers; use an 'int' or 'categorical' distribution")
        values = [spec.low, spec.high]
    for value in values:
        try:
            model.model_validate({key: value})
        except ValidationError as error:
            reason = "; ".join(item["msg"] for item in error.errors())
            raise ValueError(f"{key}: {value!r} is not accepted ({reason})") from None


class SweepCreated(BaseModel):
    """Answer to `POST /sweeps`."""

    sweep_id: str = Field(description="The new sweep's id (a UUID).")
    status: SweepStatusName = Field(description="'running': trials are being queued.")


class TrialInfo(BaseModel):
    """One trial of a sweep."""

    number: int = Field(description="The trial's number in the study (0, 1, …).")
    state: TrialStateName = Field(description="Optuna's state: running, complete, pruned or fail.")
    params: dict[str, Any] = Field(description="The hyperparameters it trains with.")
    run_id: str | None = Field(description="Its training run (GET /training/status/{id}); null if none.")
    run_status: str | None = Field(description="Its run's state.")
    stop_reason: str | None = Field(description="Why its run ended (`pruned`: by the sweep's pruner).")
    objective: float | None = Field(description="Optuna's value (see success_rate, steps_to_best).")
    success_rate: float | None = Field(description="Best held-out success rate of its evaluations.")
    steps_to_best: int | None = Field(description="Timestep of its first evaluation at that rate.")
    evaluations: dict[int, float] = Field(description="Held-out success rate per evaluation timestep.")
    error: str | None = Field(description="Why it failed (invalid parameters, its run failed or stopped).")


class SweepSummary(BaseModel):
    """A sweep in `GET /sweeps`."""

    sweep_id: str = Field(description="The sweep's id.")
    status: SweepStatusName = Field(description="running → completed | stopping → stopped.")
    algorithm: Algorithm = Field(description="Algorithm every trial trains.")
    maze_size: int = Field(description="Maze cells per side.")
    n_trials: int = Field(description="Trials asked for.")
    parallel_trials: int = Field(description="Trials at once, at most.")
    trials_started: int = Field(description="Trials handed out so far.")
    created_at: datetime = Field(description="When the sweep was asked for.")
    finished_at: datetime | None = Field(description="When it ended.")
    mlflow_run_id: str | None = Field(description="The sweep's parent MLflow run (trials are its children).")


class SweepDetail(SweepSummary):
    """Everything about a sweep: its request, trials, best trial and parameter importances."""

    request: dict[str, Any] = Field(description="The request, with defaults filled in (search space too).")
    trials: list[TrialInfo] = Field(description="Its trials, by number.")
    best_trial: TrialInfo | None = Field(description="The completed trial with the best objective.")
    best_run_id: str | None = Field(description="The best trial's run: open it, download its model.")
    param_importances: dict[str, float] | None = Field(
        description="Optuna's parameter importances (fANOVA), once two trials have completed; else null."
    )


class SweepList(BaseModel):
    """Sweeps, newest first."""

    items: list[SweepSummary] = Field(description="The sweeps on this page.")
    total: int = Field(description="All sweeps.")
