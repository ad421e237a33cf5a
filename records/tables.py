"""SQLAlchemy models: the persisted record of every training run."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Integer, String, Text, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"

    @property
    def is_final(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class StopReason(enum.StrEnum):
    """Why a run ended: the first three end it `completed`, the others in the state of the same name."""

    TARGET_REACHED = "target_reached"
    BUDGET_EXHAUSTED = "budget_exhausted"
    NO_IMPROVEMENT = "no_improvement"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    PRUNED = "pruned"  # a sweep's trial ended early by the sweep's pruner (the run ends `completed`)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware UTC datetimes; SQLite hands back naive ones, so re-attach UTC on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class TrainingRun(Base):
    """One row per `POST /training/start`; the single source of truth for every worker process."""

    __tablename__ = "training_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), index=True, default=RunStatus.QUEUED.value)

    # What the user asked for.
    total_episodes: Mapped[int] = mapped_column(Integer)
    timesteps_per_episode: Mapped[int] = mapped_column(Integer)
    total_timesteps: Mapped[int] = mapped_column(BigInteger)
    maze_size: Mapped[int] = mapped_column(Integer)
    maze_mode: Mapped[str] = mapped_column(String(8))
    seed: Mapped[int] = mapped_column(Integer)
    # The network (agents.policies.POLICIES); None for runs recorded before the choice existed: "planner".
    policy: Mapped[str | None] = mapped_column(String(24), nullable=True)
    n_envs: Mapped[int] = mapped_column(Integer)
    device_requested: Mapped[str] = mapped_column(String(8))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The client's `Idempotency-Key` for the start that created the run, and a digest of that start's
    # body: a repeat with the same key answers this run, a repeat with another body is refused.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True, index=True)
    request_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Labels (records/labels.py): a name to search by, tags to filter by, free-text notes. Changeable.
    name: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    tags: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Where to POST the final status once the run ends, and how far that got (training/notifications.py):
    # "pending" → "sending" → "sent" | "failed"; None without a notify_url.
    notify_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    notify_state: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    # When to evaluate and when to end early (see training/evaluation_callback.py); None: the default.
    target_success_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_every_episodes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    eval_episodes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    patience: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_evals_without_improvement: Mapped[int | None] = mapped_column(Integer, nullable=True)

    # What training actually used.
    device: Mapped[str | None] = mapped_column(String(16), nullable=True)
    effective_hyperparameters: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    # Liveness: which worker process trains the run, and when it last said so.
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    # Latest progress snapshot; `progress_version` increases with every snapshot written.
    progress_version: Mapped[int] = mapped_column(Integer, default=0)
    progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    episode: Mapped[int] = mapped_column(Integer, default=0)
    timesteps: Mapped[int] = mapped_column(BigInteger, default=0)
    maze_episodes: Mapped[int] = mapped_column(Integer, default=0)
    maze_successes: Mapped[int] = mapped_column(Integer, default=0)
    reward: Mapped[float | None] = mapped_column(Float, nullable=True)
    success_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    fps: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_success_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_path_efficiency: Mapped[float | None] = mapped_column(Float, nullable=True)

    # Held-out evaluation so far, kept so that a resumed run continues its schedule and its best model:
    # the timestep of the latest evaluation, the streaks that end a run early, and the best evaluation.
    eval_timesteps: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    evals_at_target: Mapped[int | None] = mapped_column(Integer, nullable=True)
    evals_without_improvement: Mapped[int | None] = mapped_column(Integer, nullable=True)
    best_eval_success_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    best_eval_path_efficiency: Mapped[float | None] = mapped_column(Float, nullable=True)
    best_eval_timesteps: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Why a final run ended (StopReason); None while it runs, and for runs finished before it existed.
    stop_reason: Mapped[str | None] = mapped_column(String(24), nullable=True)

    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_path: Mapped[str | None] = mapped_column(String(500), nullable=True)
    fixed_maze_seed: Mapped[int | None] = mapped_column(Integer, nullable=True)

    # Experiment tracking (MLflow): "ok", or "degraded" while logging waits for the store to return.
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tracking_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    tracking_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    # ONNX export: "pending" → "exported" | "failed".
    onnx_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    onnx_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    onnx_size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    onnx_opset: Mapped[int | None] = mapped_column(Integer, nullable=True)
    onnx_export_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    onnx_parity_passed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)

    # The MLflow model registry (`register_as`): the name asked for, and how far registering the run's
    # ONNX model got: "pending" → "registered" (with the version) | "failed" (with the error).
    register_as: Mapped[str | None] = mapped_column(String(128), nullable=True)
    registry_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    registered_model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    registry_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    # A sweep's trial (sweeps/): the sweep and the Optuna trial number; None for a run started by hand.
    sweep_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    sweep_trial: Mapped[int | None] = mapped_column(Integer, nullable=True)


def run_policy(run: TrainingRun) -> str:
    """The run's network choice; runs recorded before the choice existed trained the `planner`."""
    return run.policy or "planner"


class SweepStatus(enum.StrEnum):
    RUNNING = "running"
    STOPPING = "stopping"  # stop asked: its trials are being stopped and recorded
    COMPLETED = "completed"
    STOPPED = "stopped"

    @property
    def is_final(self) -> bool:
        return self in (SweepStatus.COMPLETED, SweepStatus.STOPPED)


class Sweep(Base):
    """One row per `POST /sweeps`; its Optuna study (`sweep-<id>`) lives in the same database."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=SweepStatus.RUNNING.value)
    algorithm: Mapped[str] = mapped_column(String(8))
    maze_size: Mapped[int] = mapped_column(Integer)
    # The whole validated request (search space resolved to its defaults), as JSON.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_trials: Mapped[int] = mapped_column(Integer)
    parallel_trials: Mapped[int] = mapped_column(Integer)
    # Trials handed out so far, across all workers: raised by compare-and-set, so none is handed out twice.
    trials_claimed: Mapped[int] = mapped_column(Integer, default=0)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
