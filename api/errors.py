"""Typed errors turned into HTTP answers, in one place."""

from __future__ import annotations

import math
import re
from typing import Any

import structlog
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import (
    ArtifactStoreUnavailable,
    InvalidApiKey,
    InvalidRequest,
    ModelFileCorrupt,
    ModelFileUnreadable,
    ModelNotAvailable,
    NotExportable,
    NotResumable,
    PolicyNotExported,
    PolicyPlayersBusy,
    RunNotFound,
    RunStillActive,
    ServiceBusy,
    ServiceError,
    SweepNotFound,
    TrackingUnavailable,
    describe,
)

log = structlog.get_logger(__name__)

STATUS_CODES: dict[type[ServiceError], int] = {
    InvalidApiKey: 401,
    RunNotFound: 404,
    SweepNotFound: 404,
    ModelNotAvailable: 404,
    NotResumable: 409,
    NotExportable: 409,
    PolicyNotExported: 409,
    RunStillActive: 409,
    ModelFileCorrupt: 409,
    InvalidRequest: 422,
    ServiceBusy: 429,
    PolicyPlayersBusy: 429,
    ArtifactStoreUnavailable: 503,
    ModelFileUnreadable: 503,
    TrackingUnavailable: 503,
}


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


def _detail(error: ServiceError) -> Any:
    if isinstance(error, InvalidRequest):
        # Same shape as FastAPI's own validation errors, so clients parse one format.
        return [{"type": "value_error", "loc": ["body", error.field], "msg": error.message, "input": None}]
    return str(error)


def _headers(error: ServiceError) -> dict[str, str] | None:
    if isinstance(error, ServiceBusy | PolicyPlayersBusy):
        return {"Retry-After": str(error.retry_after_s)}
    if isinstance(error, InvalidApiKey):
        return {"WWW-Authenticate": "ApiKey"}
    return None


def error_response(error: ServiceError) -> JSONResponse:
    """The answer to a typed error; also for middleware, which runs outside the exception handlers."""
    return JSONResponse(
        status_code=STATUS_CODES[type(error)], content={"detail": _detail(error)}, headers=_headers(error)
    )


async def _service_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)
    return error_response(error)


async def _database_unavailable(_request: Request, error: Exception) -> JSONResponse:
    log.warning("database_unavailable", error=describe(error))
    return JSONResponse(
        status_code=503,
        content={"detail": "the database is unavailable; try again shortly"},
        headers={"Retry-After": "5"},
    )


class BodyTooLarge(HTTPException):
    """A streamed body grew past MAX_REQUEST_BYTES while the app read it: 413.

    An HTTPException on purpose, and so defined here, with the other HTTP answers: FastAPI turns any
    other error raised while it reads a body into a 400 ("There was an error parsing the body"), but
    lets an HTTPException through to its handler.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(status_code=413, detail=f"request body larger than {max_bytes} bytes")


async def _http_error(request: Request, error: Exception) -> Any:
    """Starlette's own answers, but a 405's `Allow` lists every method the API documents for the path:
    Starlette names only the first route that matched it (`GET /experiments/{id}` hid its PATCH and
    DELETE), and RFC 9110 asks for all of them."""
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 405:
        allowed = _documented_methods(request.app, request.url.path)
        if allowed:
            error = StarletteHTTPException(405, error.detail, headers={"Allow": ", ".join(allowed)})
    return await http_exception_handler(request, error)


def _documented_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI document lists for the path templates `path` matches."""
    if not hasattr(app.state, "path_methods"):
        app.state.path_methods = [
            (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"), list(item))
            for template, item in app.openapi().get("paths", {}).items()
        ]
    allowed: list[str] = []
    for pattern, methods in app.state.path_methods:
        if pattern.match(path):
            allowed += [method.upper() for method in methods if method.upper() not in allowed]
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(ServiceError, _service_error)
    # Connection failures, timeouts, a locked SQLite file (OperationalError is one of these).
    app.add_exception_handler(DBAPIError, _database_unavailable)
