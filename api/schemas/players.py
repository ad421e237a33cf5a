"""Models of playing a run's policy: `POST /experiments/{id}/rollout` and `/evaluate`."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from api.schemas.common import EXPERIMENT_ID, MAX_EVAL_EPISODES, MAZE_SIZE, Strict


class RolloutRequest(Strict):
    """Body of `POST /experiments/{experiment_id}/rollout`."""

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
    """One maze played by the trained policy, for drawing."""

    maze_size: int = Field(description=MAZE_SIZE)
    maze_seed: int = Field(description="Seed of the maze played (replay it with the same seed).")
    grid: list[list[int]] = Field(description="(2N+1) × (2N+1) squares: 0 open, 1 wall.")
    start: Square
    goal: Square
    path: list[Square] = Field(description="Every square the agent occupied, from start.")
    success: bool = Field(description="The agent reached the goal within the time limit.")
    steps: int = Field(description="Actions taken (one action moves one cell, i.e. two squares).")
    shortest_path_steps: int = Field(description="Actions on a shortest path.")


class EvaluateRequest(Strict):
    """Body of `POST /experiments/{experiment_id}/evaluate`."""

    episodes: int = Field(100, ge=1, le=MAX_EVAL_EPISODES, description="Held-out evaluation mazes to play.")


class EvaluateResponse(BaseModel):
    """The trained policy's results on held-out mazes."""

    experiment_id: str = Field(description=EXPERIMENT_ID)
    episodes: int = Field(description="Mazes played.")
    success_rate: float = Field(description="Share of mazes solved (0..1).")
    path_efficiency: float = Field(description="Mean of shortest-path steps / steps taken (0 for failures).")
    mean_steps: float = Field(description="Mean actions per maze played.")
