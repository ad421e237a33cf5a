"""`/training/*`: start a run, read its status, stop it."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import ServiceDep, StatusCacheDep, StoreDep
from api.responses import BAD_BODY, DATABASE_DOWN, NOT_FOUND, QUEUE_FULL
from api.schemas import (
    ErrorMessage,
    StartTrainingRequest,
    StartTrainingResponse,
    StopTrainingResponse,
    TrainingStatus,
)
from records.tables import RunStatus

router = APIRouter(prefix="/training", tags=["training"])

STOP_POLL_S = 0.2


@router.post(
    "/start",
    response_model=StartTrainingResponse,
    summary="Start (or queue) a training run",
    responses={**BAD_BODY, **QUEUE_FULL, **DATABASE_DOWN},
)
async def start_training(
    request: StartTrainingRequest,
    service: ServiceDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="A key of the client's choosing (e.g. a UUID) that makes retrying this start safe: "
            "a repeat with the same key and body answers the run the first one created (200, with its "
            "current `run_status`) and creates none; a repeat with another body is refused (422).",
        ),
    ] = None,
) -> StartTrainingResponse:
    """Records the run and starts training in a background thread, or queues it behind the
    concurrency cap (`MAX_CONCURRENT_RUNS`). `status` is always `"started"` (the seed's contract);
    `run_status` tells whether it is already `running` or `queued`."""
    run = await run_in_threadpool(service.submit, request, idempotency_key)
    return StartTrainingResponse(experiment_id=run.id, run_status=run.status)


@router.get(
    "/status/{experiment_id}",
    response_model=TrainingStatus,
    summary="State and progress of a run",
    responses={**NOT_FOUND, **DATABASE_DOWN},
)
async def get_training_status(experiment_id: uuid.UUID, cache: StatusCacheDep) -> Response:
    """At most `STATUS_CACHE_S` behind changes made by another worker process; exact for changes made
    through this one. `elapsed_s` and `eta_s` are as of the same moment."""
    snapshot = await cache.get(str(experiment_id))
    # Encoded when the snapshot was read (see status_cache.Snapshot); `response_model` documents it.
    return Response(snapshot.status_json, media_type="application/json")


@router.post(
    "/stop/{experiment_id}",
    response_model=StopTrainingResponse,
    summary="Stop a run gracefully",
    responses={**NOT_FOUND, **DATABASE_DOWN},
)
async def stop_training(
    experiment_id: uuid.UUID,
    service: ServiceDep,
    store: StoreDep,
    cache: StatusCacheDep,
    wait_s: Annotated[float, Query(ge=0, le=60, description="Seconds to wait for the run to end.")] = 15.0,
) -> StopTrainingResponse:
    """A queued run is stopped at once. A running run saves the model trained so far and ends as
    `stopped`; the call waits up to `wait_s` seconds for that. Stopping a finished run changes nothing.
    Once it answers a final state, every worker's status shows that state."""
    run_id = str(experiment_id)
    before = await run_in_threadpool(store.get, run_id)
    if RunStatus(before.status).is_final:
        return StopTrainingResponse(
            experiment_id=run_id,
            status=before.status,
            message=f"run already {before.status}; nothing to stop",
        )
    run = await run_in_threadpool(service.request_stop, run_id)
    deadline = time.monotonic() + wait_s
    while not RunStatus(run.status).is_final and time.monotonic() < deadline:
        await asyncio.sleep(STOP_POLL_S)
        run = await run_in_threadpool(store.get, run_id)
    if RunStatus(run.status).is_final:
        await cache.settle()  # other workers' status snapshots catch up before we say it is over
        message = f"run {run.status}" + (" and its model saved" if run.model_path else "")
    else:
        message = "stop requested; the run will save its model and end as 'stopped' shortly"
    return StopTrainingResponse(experiment_id=run_id, status=run.status, message=message)


@router.post(
    "/resume/{experiment_id}",
    response_model=StartTrainingResponse,
    summary="Continue an interrupted, stopped or failed run from its newest readable checkpoint",
    responses={
        **NOT_FOUND,
        409: {
            "model": ErrorMessage,
            "description": "Not interrupted/stopped/failed, or nothing readable saved to resume from",
        },
        **DATABASE_DOWN,
    },
)
async def resume_training(
    experiment_id: uuid.UUID, service: ServiceDep, cache: StatusCacheDep
) -> StartTrainingResponse:
    """Queues the run again; it continues from its newest checkpoint that loads (an unreadable newer
    one is skipped) with its step count, progress counters and MLflow run carrying on. Once it answers,
    every worker's status shows the run queued (or running)."""
    run = await run_in_threadpool(service.resume, str(experiment_id))
    await cache.settle()
    return StartTrainingResponse(experiment_id=run.id, run_status=run.status)
