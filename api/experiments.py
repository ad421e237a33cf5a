"""`/experiments/*`: runs joined with their MLflow data, model downloads, rollouts and evaluation."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from typing import Annotated

import structlog
from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

import maze_env
from agents.evaluation import evaluate_with
from agents.onnx_policy import OnnxPolicy
from agents.rollouts import play_maze
from api.deps import SettingsDep, StoreDep, TrackerDep
from api.responses import BAD_BODY, DATABASE_DOWN, NO_ONNX_MODEL, NOT_FOUND
from db_models import TrainingRun
from mlflow_client import RunDetails, Tracker
from model_files import ARTIFACT_PATHS, model_available, model_file
from run_views import experiment_summary, onnx_info, training_status
from schemas import (
    Algorithm,
    ArtifactInfo,
    ErrorMessage,
    EvaluateRequest,
    EvaluateResponse,
    ExperimentDetail,
    ExperimentList,
    MetricPoint,
    RolloutRequest,
    RolloutResponse,
    RunStatusName,
)
from settings import Settings

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/experiments", tags=["experiments"])

# Artifacts we serve ourselves, by their MLflow artifact path.
SERVED_ARTIFACTS = {path: filename for filename, path in ARTIFACT_PATHS.items()}
# Far beyond any run count; the databases' OFFSET overflows past 2**63 - 1 (a 500, not an empty page).
MAX_OFFSET = 2**31 - 1


@router.get(
    "",
    response_model=ExperimentList,
    summary="Runs, newest first, with their MLflow run ids",
    responses=DATABASE_DOWN,
)
async def list_experiments(
    tracker: TrackerDep,
    store: StoreDep,
    settings: SettingsDep,
    status: Annotated[RunStatusName | None, Query(description="Only runs in this state.")] = None,
    algorithm: Annotated[Algorithm | None, Query(description="Only runs of this algorithm.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ExperimentList:
    runs, total = await run_in_threadpool(
        store.list_runs, status=status, algorithm=algorithm, limit=limit, offset=offset
    )
    mlflow_experiment = tracker.cached_experiment_id()
    items = [experiment_summary(run, settings, mlflow_experiment) for run in runs]
    return ExperimentList(items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/{experiment_id}",
    response_model=ExperimentDetail,
    summary="One run with its MLflow data",
    responses={**NOT_FOUND, **DATABASE_DOWN},
)
async def get_experiment(
    experiment_id: uuid.UUID, tracker: TrackerDep, store: StoreDep, settings: SettingsDep
) -> ExperimentDetail:
    """Parameters, latest metrics, metric history, artifacts and links. When MLflow cannot be reached
    the run's own record is still returned, with `mlflow_error` saying why the rest is missing."""
    run = await run_in_threadpool(store.get, str(experiment_id))
    details: RunDetails | None = None
    mlflow_error: str | None = None
    if run.mlflow_run_id:
        try:
            details = await run_in_threadpool(tracker.run_details, run.mlflow_run_id)
        except Exception as error:
            mlflow_error = f"MLflow unavailable: {type(error).__name__}: {str(error).splitlines()[0]}"
    else:
        mlflow_error = "no MLflow run recorded yet"
    summary = experiment_summary(run, settings, details.experiment_id if details else None)
    return ExperimentDetail(
        **summary.model_dump(),
        training=training_status(run, settings),
        params=details.params if details else {},
        metrics=details.metrics if details else {},
        history={
            key: [MetricPoint(step=step, value=value) for step, value in points]
            for key, points in (details.history.items() if details else [])
        },
        artifacts=[_artifact(run, name, size) for name, size in (details.artifacts if details else [])],
        onnx=onnx_info(run),
        model_zip_url=f"/experiments/{run.id}/model.zip" if model_available(settings, run) else None,
        mlflow_error=mlflow_error,
    )


def _artifact(run: TrainingRun, name: str, size: int | None) -> ArtifactInfo:
    served = SERVED_ARTIFACTS.get(name)
    return ArtifactInfo(
        name=name, size_bytes=size, download_url=f"/experiments/{run.id}/{served}" if served else None
    )


async def _fetch(tracker: Tracker, settings: Settings, run: TrainingRun, filename: str) -> Path | None:
    """The run's file, from this machine or (trained on a Ray worker) the MLflow artifact store."""
    try:
        return await run_in_threadpool(model_file, settings, tracker, run, filename)
    except Exception as error:
        log.warning("artifact_fetch_failed", experiment_id=run.id, file=filename, error=str(error))
        raise HTTPException(
            503, f"the MLflow artifact store holding {filename} is unavailable: {type(error).__name__}"
        ) from error


async def _existing_model(
    tracker: Tracker, store: StoreDep, settings: Settings, experiment_id: uuid.UUID, filename: str
) -> Path:
    run = await run_in_threadpool(store.get, str(experiment_id))
    if filename == "model.onnx" and run.onnx_status != "exported":
        raise HTTPException(
            404, f"run {run.id} has no exported ONNX model (export: {run.onnx_status or 'not yet'})"
        )
    path = await _fetch(tracker, settings, run, filename)
    if path is None:
        raise HTTPException(404, f"run {run.id} has no saved {filename} yet (status: {run.status})")
    return path


@router.get(
    "/{experiment_id}/model.onnx",
    response_class=FileResponse,
    summary="Download the exported ONNX policy",
    responses={
        200: {"content": {"application/octet-stream": {}}},
        404: {"model": ErrorMessage, "description": "Unknown run, or not exported yet"},
        **DATABASE_DOWN,
    },
)
async def download_onnx(
    experiment_id: uuid.UUID, tracker: TrackerDep, store: StoreDep, settings: SettingsDep
) -> FileResponse:
    path = await _existing_model(tracker, store, settings, experiment_id, "model.onnx")
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"maze-policy-{experiment_id}.onnx"
    )


@router.get(
    "/{experiment_id}/model.zip",
    response_class=FileResponse,
    summary="Download the Stable-Baselines3 model (PPO.load / DQN.load)",
    responses={
        200: {"content": {"application/zip": {}}},
        404: {"model": ErrorMessage, "description": "Unknown run, or no model saved yet"},
        **DATABASE_DOWN,
    },
)
async def download_sb3_model(
    experiment_id: uuid.UUID, tracker: TrackerDep, store: StoreDep, settings: SettingsDep
) -> FileResponse:
    path = await _existing_model(tracker, store, settings, experiment_id, "model.zip")
    return FileResponse(path, media_type="application/zip", filename=f"maze-policy-{experiment_id}.zip")


async def _exported_policy(
    tracker: Tracker, store: StoreDep, settings: Settings, experiment_id: uuid.UUID
) -> tuple[TrainingRun, Path]:
    run = await run_in_threadpool(store.get, str(experiment_id))
    path = await _fetch(tracker, settings, run, "model.onnx") if run.onnx_status == "exported" else None
    if path is None:
        raise HTTPException(409, f"run {run.id} has no exported ONNX model yet (status: {run.status})")
    return run, path


@router.post(
    "/{experiment_id}/rollout",
    response_model=RolloutResponse,
    summary="Watch the policy solve a maze",
    responses={**BAD_BODY, **NOT_FOUND, **NO_ONNX_MODEL, **DATABASE_DOWN},
)
async def rollout(
    experiment_id: uuid.UUID,
    body: RolloutRequest,
    tracker: TrackerDep,
    store: StoreDep,
    settings: SettingsDep,
) -> RolloutResponse:
    """Runs the exported ONNX policy deterministically on one maze and returns the maze and the path."""
    run, path = await _exported_policy(tracker, store, settings, experiment_id)
    maze_seed = body.maze_seed
    if maze_seed is None:
        maze_seed = run.fixed_maze_seed if run.fixed_maze_seed is not None else secrets.randbelow(2**31)
    policy = OnnxPolicy(path)
    result = await run_in_threadpool(play_maze, policy.predict, run.maze_size, maze_seed)
    return RolloutResponse(
        maze_size=run.maze_size,
        maze_seed=maze_seed,
        grid=result.maze.grid.astype(int).tolist(),
        start=result.maze.start,
        goal=result.maze.goal,
        path=result.path,
        success=result.success,
        steps=result.steps,
        shortest_path_steps=result.shortest_path_steps,
    )


@router.post(
    "/{experiment_id}/evaluate",
    response_model=EvaluateResponse,
    summary="Success on held-out mazes",
    responses={**BAD_BODY, **NOT_FOUND, **NO_ONNX_MODEL, **DATABASE_DOWN},
)
async def evaluate(
    experiment_id: uuid.UUID,
    body: EvaluateRequest,
    tracker: TrackerDep,
    store: StoreDep,
    settings: SettingsDep,
) -> EvaluateResponse:
    """Plays the exported policy on `episodes` evaluation mazes (seeds disjoint from training's)."""
    run, path = await _exported_policy(tracker, store, settings, experiment_id)
    policy = OnnxPolicy(path)
    seeds = maze_env.eval_maze_seeds(body.episodes)
    result = await run_in_threadpool(evaluate_with, policy.predict, run.maze_size, seeds)
    return EvaluateResponse(
        experiment_id=run.id,
        episodes=result.episodes,
        success_rate=result.success_rate,
        path_efficiency=result.path_efficiency,
        mean_steps=result.mean_steps,
    )
