"""Typed errors turned into HTTP answers, in one place."""

from __future__ import annotations

import math
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError

from run_store import RunNotFound
from training_service import InvalidRequest, NotResumable, ServiceBusy

log = structlog.get_logger(__name__)


async def _run_not_found(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RunNotFound)
    return JSONResponse(status_code=404, content={"detail": str(error)})


async def _request_invalid(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    # FastAPI's own handler echoes each error's input, and some inputs have no JSON form (NaN, ±Infinity,
    # a body that is not UTF-8): encoding them failed with a 500, and uvicorn dropped the connection.
    detail = jsonable_encoder(error.errors(), custom_encoder=_JSON_SAFE)
    return JSONResponse(status_code=422, content={"detail": detail})


def _finite_or_text(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


_JSON_SAFE: dict[Any, Any] = {
    float: _finite_or_text,
    bytes: lambda value: value.decode(errors="replace"),
}


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
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(RunNotFound, _run_not_found)
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(ServiceBusy, _service_busy)
    app.add_exception_handler(NotResumable, _not_resumable)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(DBAPIError, _database_unavailable)
