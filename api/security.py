"""Request guards: the optional API key (REST and WebSocket), WebSocket origins, and body size."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any
from urllib.parse import urlparse

from fastapi import Request, Security, WebSocket
from fastapi.security import APIKeyHeader

from api.errors import BodyTooLarge
from core.errors import InvalidApiKey
from core.settings import Settings

API_KEY_HEADER = "X-API-Key"
# Browsers cannot set headers on a WebSocket: they offer the key as the subprotocol "apikey.<key>".
SUBPROTOCOL_PREFIX = "apikey."

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="Needed when the service runs with API_KEY set."
)


async def require_api_key(request: Request, given: Annotated[str | None, Security(_api_key_header)]) -> None:
    """REST guard: with `API_KEY` set, every call needs the header `X-API-Key`."""
    settings: Settings = request.app.state.settings
    if settings.api_key and not _matches(given, settings.api_key):
        raise InvalidApiKey(f"missing or invalid API key (send it in the {API_KEY_HEADER} header)")


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
    offered = protocol.removeprefix(SUBPROTOCOL_PREFIX) if protocol else websocket.query_params.get("token")
    return None if _matches(offered, settings.api_key) else "missing or invalid API key"


def _origin_allowed(origin: str, host: str, allowed: list[str]) -> bool:
    # CORS does not cover WebSockets, so the same-origin rule is applied here by hand.
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
