"""Request guards: the optional API key (REST, API docs and WebSocket), WebSocket origins, and body size."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlparse

from fastapi import Security, WebSocket
from fastapi.security import APIKeyHeader

from api.errors import BodyTooLarge, error_response
from core.errors import InvalidApiKey
from core.settings import Settings

API_KEY_HEADER = "X-API-Key"
# Browsers cannot set headers on a WebSocket: they offer the key as the subprotocol "apikey.<key>".
SUBPROTOCOL_PREFIX = "apikey."
# FastAPI's API documentation: closed with the rest when API_KEY is set, unless DOCS_PUBLIC.
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


# Declares the header in the OpenAPI document (Swagger UI's "Authorize"); ApiKeyGate checks it.
API_KEY_SCHEME = Security(
    APIKeyHeader(
        name=API_KEY_HEADER, auto_error=False, description="Needed when the service runs with API_KEY set."
    )
)


class ApiKeyGate:
    """With `API_KEY` set, answers 401 to calls under the guarded paths without the `X-API-Key` header.

    A middleware rather than a route dependency: FastAPI parses a body before it runs dependencies, so
    a caller without the key got a 422 for malformed JSON, learning about the API before proving who it is.

    :param app: the wrapped ASGI app.
    :param settings: the key, and whether the API docs stay public.
    :param guarded_prefixes: path prefixes of the guarded routes; the docs are added unless public.
    """

    def __init__(self, app: ASGIApp, settings: Settings, guarded_prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.api_key = settings.api_key
        self.prefixes = guarded_prefixes if settings.docs_public else (*guarded_prefixes, *DOCS_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.api_key and self._guarded(scope["path"]):
            given = dict(scope.get("headers", [])).get(API_KEY_HEADER.lower().encode())
            if not _matches(given.decode("latin-1") if given is not None else None, self.api_key):
                error = InvalidApiKey(f"missing or invalid API key (send it in the {API_KEY_HEADER} header)")
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _guarded(self, path: str) -> bool:
        return any(path == prefix or path.startswith(f"{prefix}/") for prefix in self.prefixes)


def websocket_subprotocol(websocket: WebSocket) -> str | None:
    """The offered `apikey.<key>` subprotocol, which must be echoed back or Chromium drops the socket."""
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith(SUBPROTOCOL_PREFIX):
            return str(protocol)
    return None


def websocket_rejection(websocket: WebSocket, settings: Settings) -> str | None:
    """Why this WebSocket may not connect (bad origin, missing key), or None when it may."""
    origin = websocket.headers.get("origin")
    if origin and not _origin_allowed(origin, websocket.headers.get("host", ""), settings.cors_origins):
        return "origin not allowed"
    if not settings.api_key:
        return None
    protocol = websocket_subprotocol(websocket)
    offered = (
        protocol.removeprefix(SUBPROTOCOL_PREFIX)
        if protocol
        else websocket.headers.get(API_KEY_HEADER) or websocket.query_params.get("token")
    )
    return None if _matches(offered, settings.api_key) else "missing or invalid API key"


def _origin_allowed(origin: str, host: str, allowed: list[str]) -> bool:
    # CORS does not cover WebSockets, so the same-origin rule is applied here by hand. Comparing with
    # Host is safe only because TrustedHostMiddleware (ALLOWED_HOSTS) refused foreign Host headers.
    return urlparse(origin).netloc == host or origin in allowed or "*" in allowed


class BodySizeLimit:
    """Answers 413 to request bodies larger than `max_bytes`, declared or streamed (chunked).

    :param app: the wrapped ASGI app.
    :param max_bytes: the largest body accepted.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # The app's exception handling answers it, as it answers any HTTPException.
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": BodyTooLarge(self.max_bytes).detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
