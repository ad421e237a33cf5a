"""Typed errors turned into HTTP answers, in one place."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from core.errors import (
    ArtifactStoreUnavailable,
    InvalidApiKey,
    InvalidRequest,
    ModelNotAvailable,
    NotResumable,
    PolicyNotExported,
    RunNotFound,
    ServiceBusy,
    ServiceError,
    describe,
)

log = structlog.get_logger(__name__)

STATUS_CODES: dict[type[ServiceError], int] = {
    InvalidApiKey: 401,
    RunNotFound: 404,
    ModelNotAvailable: 404,
    NotResumable: 409,
    PolicyNotExported: 409,
    InvalidRequest: 422,
    ServiceBusy: 429,
    ArtifactStoreUnavailable: 503,
}


def _detail(error: ServiceError) -> Any:
    if isinstance(error, InvalidRequest):
        # Same shape as FastAPI's own validation errors, so clients parse one format.
        return [{"type": "value_error", "loc": ["body", error.field], "msg": error.message, "input": None}]
    return str(error)


def _headers(error: ServiceError) -> dict[str, str] | None:
    if isinstance(error, ServiceBusy):
        return {"Retry-After": str(error.retry_after_s)}
    if isinstance(error, InvalidApiKey):
        return {"WWW-Authenticate": "ApiKey"}
    return None


async def _service_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)
    return JSONResponse(
        status_code=STATUS_CODES[type(error)], content={"detail": _detail(error)}, headers=_headers(error)
    )


async def _database_unavailable(_request: Request, error: Exception) -> JSONResponse:
    log.warning("database_unavailable", error=describe(error))
    return JSONResponse(
        status_code=503,
        content={"detail": "the database is unavailable; try again shortly"},
        headers={"Retry-After": "5"},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    # Connection failures, timeouts, a locked SQLite file (OperationalError is one of these).
    app.add_exception_handler(DBAPIError, _database_unavailable)
