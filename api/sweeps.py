"""`/sweeps`: start a hyperparameter sweep, list sweeps, read one, stop one."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from api.responses import BAD_BODY, DATABASE_DOWN, _error
from api.schemas.sweeps import SweepCreated, SweepDetail, SweepList, SweepRequest, SweepSummary
from sweeps.service import SweepService, summary

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

SWEEP_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _error("No sweep has this sweep_id")}
MAX_OFFSET = 2**31 - 1


async def get_sweeps(request: Request) -> SweepService:
    sweeps: SweepService = request.app.state.sweeps
    return sweeps


SweepsDep = Annotated[SweepService, Depends(get_sweeps)]


@router.post(
    "",
    response_model=SweepCreated,
    summary="Start a hyperparameter sweep (an Optuna study whose trials are training runs)",
    responses={**BAD_BODY, **DATABASE_DOWN},
)
async def create_sweep(request: SweepRequest, sweeps: SweepsDep) -> SweepCreated:
    """Records the sweep; its trials are queued as ordinary runs, at most `parallel_trials` at once,
    under the service's concurrency cap."""
    sweep = await run_in_threadpool(sweeps.create, request)
    return SweepCreated(sweep_id=sweep.id, status=sweep.status)


@router.get("", response_model=SweepList, summary="List sweeps, newest first", responses=DATABASE_DOWN)
async def list_sweeps(
    sweeps: SweepsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> SweepList:
    return await run_in_threadpool(sweeps.list, limit, offset)


@router.get(
    "/{sweep_id}",
    response_model=SweepDetail,
    summary="A sweep: state, trials, best trial, parameter importances",
    responses={**SWEEP_NOT_FOUND, **DATABASE_DOWN},
)
async def get_sweep(sweep_id: uuid.UUID, sweeps: SweepsDep) -> SweepDetail:
    return await run_in_threadpool(sweeps.detail, str(sweep_id))


@router.post(
    "/{sweep_id}/stop",
    response_model=SweepSummary,
    summary="Stop a sweep and its running trials",
    responses={**SWEEP_NOT_FOUND, **DATABASE_DOWN},
)
async def stop_sweep(sweep_id: uuid.UUID, sweeps: SweepsDep) -> SweepSummary:
    """No more trials start; running ones are stopped (their models saved) and recorded as failed
    trials; the sweep ends `stopped` once they have ended (`stopping` until then)."""
    sweep = await run_in_threadpool(sweeps.stop, str(sweep_id))
    return summary(sweep)
