"""`/experiments/*`: runs joined with their MLflow data, model downloads, rollouts and evaluation."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import StringConstraints

from api.deps import ExperimentsDep, ServiceDep, SettingsDep
from api.responses import BAD_BODY, DATABASE_DOWN, MODEL_FILE_FAULTS, NOT_FOUND, PLAYERS_BUSY
from api.schemas import (
    Algorithm,
    ArtifactInfo,
    ErrorMessage,
    EvaluateRequest,
    EvaluateResponse,
    ExperimentDetail,
    ExperimentList,
    ExperimentSummary,
    LogRecord,
    MetricPoint,
    OnnxInfo,
    RolloutRequest,
    RolloutResponse,
    RunLogs,
    RunStatusName,
)
from api.schemas.labels import MAX_NAME_LENGTH, MAX_TAGS, TAG_FILTER_PATTERN, LabelsUpdate
from records.files import ARTIFACT_PATHS, LAST_MODEL_FILE, model_available, saved_file
from records.tables import TrainingRun
from records.views import experiment_summary, onnx_info, registered_model, training_status

router = APIRouter(prefix="/experiments", tags=["experiments"])

# Artifacts we serve ourselves, by their MLflow artifact path.
SERVED_ARTIFACTS = {path: filename for filename, path in ARTIFACT_PATHS.items()}
# Far beyond any run count; the databases' OFFSET overflows past 2**63 - 1 (a 500, not an empty page).
MAX_OFFSET = 2**31 - 1
MAX_LOG_RECORDS = 1000
TagFilter = Annotated[str, StringConstraints(min_length=1, max_length=400, pattern=TAG_FILTER_PATTERN)]


@router.get(
    "",
    response_model=ExperimentList,
    summary="Runs, newest first, with their MLflow run ids",
    responses=DATABASE_DOWN,
)
async def list_experiments(
    experiments: ExperimentsDep,
    settings: SettingsDep,
    status: Annotated[RunStatusName | None, Query(description="Only runs in this state.")] = None,
    algorithm: Annotated[Algorithm | None, Query(description="Only runs of this algorithm.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_NAME_LENGTH,
            description="Only runs whose name contains this (any case).",
        ),
    ] = None,
    tag: Annotated[
        list[TagFilter] | None,
        Query(
            max_length=MAX_TAGS,
            description="Only runs with this tag: `key:value` (that value) or `key` (any value). Repeat it "
            "to require several (`?tag=team:maze&tag=goal:baseline`).",
        ),
    ] = None,
    sweep_id: Annotated[
        uuid.UUID | None, Query(description="Only the trials of this sweep (`GET /sweeps/{id}`).")
    ] = None,
) -> ExperimentList:
    page = await run_in_threadpool(
        partial(
            experiments.list_runs,
            status=status,
            algorithm=algorithm,
            limit=limit,
            offset=offset,
            name_query=q,
            tags=tag or [],
            sweep_id=str(sweep_id) if sweep_id else None,
        )
    )
    items = [experiment_summary(run, settings, page.mlflow_experiment_id) for run in page.runs]
    return ExperimentList(items=items, total=page.total, limit=limit, offset=offset)


@router.get(
    "/{experiment_id}",
    response_model=ExperimentDetail,
    summary="One run with its MLflow data",
    responses={**NOT_FOUND, **DATABASE_DOWN},
)
async def get_experiment(
    experiment_id: uuid.UUID, experiments: ExperimentsDep, settings: SettingsDep
) -> ExperimentDetail:
    """Parameters, latest metrics, metric history, artifacts and links. When MLflow cannot be reached
    the run's own record is still returned, with `mlflow_error` saying why the rest is missing."""
    record = await run_in_threadpool(experiments.get, str(experiment_id))
    run, details = record.run, record.mlflow
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
        registered_model=registered_model(run),
        model_zip_url=f"/experiments/{run.id}/model.zip" if model_available(settings, run) else None,
        last_model_zip_url=(
            f"/experiments/{run.id}/{LAST_MODEL_FILE}" if saved_file(settings, run, LAST_MODEL_FILE) else None
        ),
        mlflow_error=record.mlflow_error,
        notify_url=run.notify_url,
        notify_state=run.notify_state,
    )


@router.patch(
    "/{experiment_id}",
    response_model=ExperimentSummary,
    summary="Change a run's name, tags or notes",
    responses={**BAD_BODY, **NOT_FOUND, **DATABASE_DOWN},
)
async def update_labels(
    experiment_id: uuid.UUID, body: LabelsUpdate, experiments: ExperimentsDep, settings: SettingsDep
) -> ExperimentSummary:
    """A JSON merge patch of the labels (see the body's schema), in any state of the run. The MLflow run's
    name, tags and description follow (retried in the background while MLflow is unreachable)."""
    run = await run_in_threadpool(experiments.update_labels, str(experiment_id), body)
    return experiment_summary(run, settings, None)


@router.delete(
    "/{experiment_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a finished run: its record, its files and its MLflow run",
    responses={
        204: {"description": "Deleted"},
        404: {"model": ErrorMessage, "description": "No run has this id (also: it was already deleted)"},
        409: {"model": ErrorMessage, "description": "The run is queued or running: stop it first"},
        503: {"model": ErrorMessage, "description": "The database or MLflow is unavailable; nothing deleted"},
    },
)
async def delete_experiment(experiment_id: uuid.UUID, experiments: ExperimentsDep) -> Response:
    """Deletes the run's record, everything the service keeps of it on disk (models, checkpoints, ONNX
    file, log) and its MLflow run (MLflow's soft delete: restorable until MLflow's `gc`). Deleting is
    idempotent in effect: a second DELETE of the same id answers 404, which clients treat as "already
    gone"."""
    await run_in_threadpool(experiments.delete, str(experiment_id))
    return Response(status_code=204)


@router.get(
    "/{experiment_id}/logs",
    response_model=RunLogs,
    summary="The service's log records about a run, newest last",
    responses={**NOT_FOUND, **DATABASE_DOWN},
)
async def run_logs(
    experiment_id: uuid.UUID,
    experiments: ExperimentsDep,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LOG_RECORDS, description="How many of the latest records.")
    ] = 100,
) -> RunLogs:
    """Structured records (`event`, `level`, `timestamp` and the event's own fields) that any worker
    process of this service wrote about the run: submitted, started, evaluations, errors, the end, the
    notification. Written whatever `LOG_LEVEL` (info and above). A run trained on a Ray worker on
    another machine has only the records of this machine."""
    run, records, truncated = await run_in_threadpool(experiments.logs, str(experiment_id), limit)
    return RunLogs(
        experiment_id=run.id, records=[LogRecord.model_validate(r) for r in records], truncated=truncated
    )


@router.post(
    "/{experiment_id}/export",
    response_model=OnnxInfo,
    summary="Export a finished run's policy to ONNX again",
    responses={
        **NOT_FOUND,
        409: {
            "model": ErrorMessage,
            "description": "The run is still training, has no saved model here, or is being exported now",
        },
        **DATABASE_DOWN,
    },
)
async def export_again(experiment_id: uuid.UUID, service: ServiceDep) -> OnnxInfo:
    """Exports the run's kept model (`model.zip`) to ONNX, verifies it against torch and publishes it
    (file, MLflow model), as the run does when it ends: for a run whose export failed, or was left
    `pending` by a worker that died (the service also does that by itself at start-up). A run already
    exported is answered as it is; the answer says `failed` with the error when the export fails again."""
    run = await run_in_threadpool(service.export_again, str(experiment_id))
    info = onnx_info(run)
    assert info is not None  # an export ran or had run
    return info


def _artifact(run: TrainingRun, name: str, size: int | None) -> ArtifactInfo:
    served = SERVED_ARTIFACTS.get(name)
    return ArtifactInfo(
        name=name, size_bytes=size, download_url=f"/experiments/{run.id}/{served}" if served else None
    )


@router.get(
    "/{experiment_id}/model.onnx",
    response_class=FileResponse,
    summary="Download the exported ONNX policy",
    responses={
        200: {"content": {"application/octet-stream": {}}},
        404: {"model": ErrorMessage, "description": "Unknown run, or not exported yet"},
        **MODEL_FILE_FAULTS,
    },
)
async def download_onnx(experiment_id: uuid.UUID, experiments: ExperimentsDep) -> FileResponse:
    path = await run_in_threadpool(experiments.model_file, str(experiment_id), "model.onnx")
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"maze-policy-{experiment_id}.onnx"
    )


@router.get(
    "/{experiment_id}/model.zip",
    response_class=FileResponse,
    summary="Download the Stable-Baselines3 model (PPO.load / DQN.load): the best evaluated one",
    responses={
        200: {"content": {"application/zip": {}}},
        404: {"model": ErrorMessage, "description": "Unknown run, or no model saved yet"},
        **MODEL_FILE_FAULTS,
    },
)
async def download_sb3_model(experiment_id: uuid.UUID, experiments: ExperimentsDep) -> FileResponse:
    path = await run_in_threadpool(experiments.model_file, str(experiment_id), "model.zip")
    return FileResponse(path, media_type="application/zip", filename=f"maze-policy-{experiment_id}.zip")


@router.get(
    "/{experiment_id}/last_model.zip",
    response_class=FileResponse,
    summary="Download the model at the run's last step, when it is not the kept (best) one",
    responses={
        200: {"content": {"application/zip": {}}},
        404: {"model": ErrorMessage, "description": "Unknown run, or its last model is model.zip"},
        **DATABASE_DOWN,
    },
)
async def download_last_sb3_model(experiment_id: uuid.UUID, experiments: ExperimentsDep) -> FileResponse:
    """`model.zip` is the model of the run's best held-out evaluation; this is the one it ended with,
    kept only when it differs (else `model.zip` is both)."""
    path = await run_in_threadpool(experiments.model_file, str(experiment_id), LAST_MODEL_FILE)
    return FileResponse(path, media_type="application/zip", filename=f"maze-policy-{experiment_id}-last.zip")


@router.post(
    "/{experiment_id}/rollout",
    response_model=RolloutResponse,
    summary="Watch the policy solve a maze",
    responses={**BAD_BODY, **NOT_FOUND, **MODEL_FILE_FAULTS, **PLAYERS_BUSY},
)
async def rollout(
    experiment_id: uuid.UUID, body: RolloutRequest, experiments: ExperimentsDep
) -> RolloutResponse:
    """Runs the exported ONNX policy deterministically on one maze and returns the maze and the path."""
    played = await experiments.play(str(experiment_id), body.maze_seed)
    result = played.rollout
    return RolloutResponse(
        maze_size=played.run.maze_size,
        maze_seed=played.maze_seed,
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
    responses={**BAD_BODY, **NOT_FOUND, **MODEL_FILE_FAULTS, **PLAYERS_BUSY},
)
async def evaluate(
    experiment_id: uuid.UUID, body: EvaluateRequest, experiments: ExperimentsDep
) -> EvaluateResponse:
    """Plays the exported policy on `episodes` evaluation mazes (seeds disjoint from training's)."""
    evaluation = await experiments.evaluate(str(experiment_id), body.episodes)
    result = evaluation.result
    return EvaluateResponse(
        experiment_id=evaluation.run.id,
        episodes=result.episodes,
        success_rate=result.success_rate,
        path_efficiency=result.path_efficiency,
        mean_steps=result.mean_steps,
    )
