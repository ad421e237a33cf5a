"""Typed errors turned into HTTP answers, in one place."""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError

from run_store import RunNotFound
from training_service import InvalidRequest, NotResumable, ServiceBusy

log = structlog.get_logger(__name__)


async def _run_not_found(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RunNotFound)
    return JSONResponse(status_code=404, content={"detail": str(error)})


async def _invalid_request(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, InvalidRequest)
    # Same shape as FastAPI's own validation errors, so clients parse one format.
    detail = [{"type": "value_error", "loc": ["body", error.field], "msg": error.message, "input": None}]
    return JSONResponse(status_code=422, content={"detail": detail})


async def _not_resumable(_request: Request, error: Exception) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": str(error)})


async def _service_busy(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceBusy)
    return JSONResponse(
        status_code=429, content={"detail": str(error)}, headers={"Retry-After": str(error.retry_after_s)}
    )


async def _database_unavailable(_request: Request, error: Exception) -> JSONResponse:
    log.warning("database_unavailable", error=str(error).splitlines()[0])
    return JSONResponse(
        status_code=503,
        content={"detail": "the database is unavailable; try again shortly"},
        headers={"Retry-After": "5"},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RunNotFound, _run_not_found)
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(ServiceBusy, _service_busy)
    app.add_exception_handler(NotResumable, _not_resumable)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(DBAPIError, _database_unavailable)
