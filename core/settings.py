"""Service configuration: one `Settings` object read from the environment and `.env`."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The names a browser on this machine uses; a DNS-rebinding page can only send its own domain's name.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# Bind addresses meaning "every interface": they name no host a request could carry.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _default_concurrency() -> int:
    # One training run per two cores keeps the API responsive; never zero.
    return max(1, (os.cpu_count() or 1) // 2)


class Settings(BaseSettings):
    """Every field can be set as an upper-case environment variable or in `.env`."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    host: str = Field("0.0.0.0", description="Interface the HTTP server binds to.")
    port: int = Field(8001, ge=1, le=65535, description="HTTP port.")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes for `python main.py`.")
    timeout_keep_alive_s: int = Field(
        65,
        ge=1,
        le=3600,
        description="Seconds an idle HTTP keep-alive connection stays open (`python main.py`); longer "
        "than the idle timeout of clients and proxies, so that the server never closes a connection "
        "a client is about to reuse.",
    )
    data_dir: Path = Field(Path("data"), description="Where the SQLite file, models and MLflow store live.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means a SQLite file in DATA_DIR.")
    mlflow_tracking_uri: str = Field("", description="MLflow tracking URI; empty means a store in DATA_DIR.")
    mlflow_experiment_name: str = Field("rl-maze", description="MLflow experiment that holds our runs.")
    mlflow_enabled: bool = Field(True, description="Log runs to MLflow; false turns tracking off.")
    mlflow_ui_url: str = Field(
        "", description="Base URL of an MLflow UI for links; empty: the tracking server's URL, if any."
    )
    progress_interval_s: float = Field(10.0, gt=0, description="Seconds between progress snapshots.")
    status_cache_s: float = Field(
        0.5,
        ge=0,
        le=10,
        description="Longest a status answer may lag a change made by another worker process (snapshots "
        "kept in memory); 0 reads the database for every status request.",
    )
    max_concurrent_runs: int = Field(
        default_factory=_default_concurrency, ge=1, description="Runs training at once; more are queued."
    )
    torch_threads: int = Field(1, ge=1, le=64, description="torch intra-op threads (process-wide).")
    heartbeat_interval_s: float = Field(2.0, gt=0, description="How often a worker proves its runs live.")
    notify_attempts: int = Field(
        6, ge=1, le=20, description="Tries of a run's end-of-run POST to its notify_url before giving up."
    )
    notify_backoff_s: float = Field(
        2.0, gt=0, le=600, description="Wait before the second try; doubled before each later one."
    )
    notify_timeout_s: float = Field(10.0, gt=0, le=120, description="Time limit of one notify POST.")
    heartbeat_timeout_s: float = Field(
        30.0, gt=0, description="A running run whose heartbeat is older than this is marked interrupted."
    )
    max_total_timesteps: int = Field(50_000_000, ge=1, description="Upper bound on a run's step budget.")
    max_queued_runs: int = Field(20, ge=0, description="Queued runs beyond which starts get 429.")
    max_maze_size: int = Field(30, ge=2, le=30, description="Largest maze_size accepted.")
    max_request_bytes: int = Field(65_536, ge=1024, description="Largest request body accepted.")
    api_key: str = Field("", description="When set, REST calls need X-API-Key and WebSockets a token.")
    docs_public: bool = Field(
        False,
        description="Serve /docs, /redoc and /openapi.json without the key when API_KEY is set; without "
        "API_KEY they are always open.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the service answers to (comma-separated or JSON list; `*` any), against "
        "DNS rebinding; empty: the loopback names plus HOST when HOST names one interface.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS (comma-separated or JSON list); none by default.",
    )
    eval_episodes: int = Field(100, ge=0, description="Held-out mazes per periodic evaluation of a run.")
    max_concurrent_evaluations: int = Field(
        2,
        ge=1,
        le=64,
        description="Rollouts and evaluations that play a policy at once in each worker process; more "
        "get 429 with Retry-After.",
    )
    checkpoint_every_episodes: int = Field(
        10, ge=0, description="Save a resumable checkpoint every N training iterations (0: never)."
    )
    data_dir_min_free_mb: int = Field(
        100,
        ge=0,
        description="/health says 'degraded' when the data directory has less free space than this (MB).",
    )
    executor: Literal["thread", "process", "ray"] = Field(
        "thread",
        description="Where runs train: threads of this process, child processes of it, or a Ray cluster.",
    )
    ray_address: str = Field(
        "", description="Ray cluster to join (host:6379, or 'auto'); empty with EXECUTOR=ray: a local one."
    )
    ray_cpus_per_run: float = Field(
        1.0, gt=0, le=256, description="CPUs a run reserves on the Ray cluster (capacity = CPUs / this)."
    )
    ray_stop_grace_s: float = Field(
        15.0, gt=0, description="After a stop request, cancel a Ray run that has not ended after this."
    )
    log_level: str = Field("INFO", description="Log level for the service and uvicorn.")
    log_json: bool = Field(True, description="JSON logs (true) or human-readable console logs (false).")

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [origin.strip() for origin in text.split(",") if origin.strip()]
        return value

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        data = self.data_dir.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{data / 'service.db'}"
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{data / 'mlflow.db'}"
        if not self.allowed_hosts:
            bound = [] if self.host in WILDCARD_HOSTS else [self.host]
            self.allowed_hosts = [*LOOPBACK_HOSTS, *bound]
        return self

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "runs"

    def run_dir(self, run_id: str) -> Path:
        """Where one run's models live; `run_id` is always our own record id, never raw user input."""
        return self.models_dir / run_id

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.data_dir / "mlartifacts"


@lru_cache
def get_settings() -> Settings:
    return Settings()
