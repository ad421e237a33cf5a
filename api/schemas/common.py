"""Types, limits and field descriptions that several of the API's models share, and the error body."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Algorithm = Literal["PPO", "DQN"]
MazeMode = Literal["random", "fixed"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
RunStatusName = Literal["queued", "running", "completed", "failed", "stopped", "interrupted"]
StopReasonName = Literal[
    "target_reached", "budget_exhausted", "no_improvement", "stopped", "interrupted", "failed", "pruned"
]

MAX_TOTAL_EPISODES = 1_000_000
# Thousands of mazes per step are what keep a GPU busy: on an H200, PPO trained 22x and DQN 29-39x as many
# steps/s with 8,192-16,384 envs as two CPU cores with the defaults (16), and solved 100% of held-out
# 10x10 mazes (bench/RESULTS.md "GPU throughput"). PPO's rollout bound (2 GiB) still applies.
MAX_N_ENVS = 16_384
MAX_EVAL_EPISODES = 5000

# Descriptions of fields that several models share.
EXPERIMENT_ID = "The run's id (a UUID)."
RUN_STATUS = "queued → running → completed | failed | stopped | interrupted."
ALGORITHM = "Stable-Baselines3 algorithm the run trains."
MAZE_SIZE = "Maze cells per side."
MAZE_MODE = "'random': a new maze every episode; 'fixed': the run's one maze."
EPISODE = "Training iterations done (each `timesteps_per_episode` steps)."
TOTAL_EPISODES = "Training iterations in the budget."
PROGRESS = "timesteps / total_timesteps, 0..1."
SUCCESS_RATE = "Rolling training success rate; the held-out evaluation success rate once the run ends."
CREATED_AT = "When the run was asked for."
FINISHED_AT = "When the run ended (null until then)."
MLFLOW_RUN_ID = "The run's MLflow run (null until MLflow has created it)."
SWEEP_ID = "The sweep this run is a trial of (`GET /sweeps/{id}`); null for a run started by hand."
SWEEP_TRIAL = "The run's trial number in that sweep (0, 1, …); null for a run started by hand."


class Strict(BaseModel):
    # strict: no `true` or "10" for an integer. No NaN or ±Infinity: Infinity passes a bound like `gt=0`,
    # and neither has a JSON form to echo back in a 422.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ErrorMessage(BaseModel):
    """Body of 4xx/5xx answers other than 422."""

    detail: str = Field(description="What went wrong, in one sentence.")
