"""Error answers as OpenAPI `responses`, so the schema documents every status a route can send."""

from __future__ import annotations

from typing import Any

from api.schemas import ErrorMessage

_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
}


def _error(description: str, **extra: Any) -> dict[str, Any]:
    return {"model": ErrorMessage, "description": description, **extra}


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _error("No run has this experiment_id")}
QUEUE_FULL: dict[int | str, dict[str, Any]] = {
    429: _error("MAX_QUEUED_RUNS runs are already queued", headers=_RETRY_AFTER)
}
BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: _error("The body could not be parsed (e.g. JSON that is not UTF-8)"),
    413: _error("The body is larger than MAX_REQUEST_BYTES"),
}
PLAYERS_BUSY: dict[int | str, dict[str, Any]] = {
    429: _error(
        "MAX_CONCURRENT_EVALUATIONS rollouts or evaluations are already running", headers=_RETRY_AFTER
    )
}
# Where a route reads a model file; its 503 includes DATABASE_DOWN's.
MODEL_FILE_FAULTS: dict[int | str, dict[str, Any]] = {
    409: _error("No exported ONNX model yet, or the model file is corrupt"),
    503: _error("The database is unavailable, or the model file cannot be read", headers=_RETRY_AFTER),
}
DATABASE_DOWN: dict[int | str, dict[str, Any]] = {
    503: _error("The database is unavailable", headers=_RETRY_AFTER)
}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: _error("API_KEY is set and the X-API-Key header is missing or wrong")
}
