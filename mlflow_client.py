"""All access to MLflow: reachability now; run tracking and queries build on this module."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

HEALTH_TIMEOUT_S = 2.0


def check_tracking_store(tracking_uri: str) -> tuple[bool, str]:
    """Is the tracking store usable? A server must answer `/health`; a local store must be writable.

    :param tracking_uri: MLflow tracking URI (http(s)://, sqlite:///, file: or a plain path).
    :returns: (ok, human-readable detail).
    """
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("http", "https"):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:
                return response.status == 200, f"server {tracking_uri} answered {response.status}"
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            return False, f"server {tracking_uri} unreachable: {error}"
    if parsed.scheme == "sqlite":
        location = Path(tracking_uri.removeprefix("sqlite:///")).parent
    elif parsed.scheme in ("file", ""):
        location = Path(parsed.path or tracking_uri)
    else:
        return True, f"store {tracking_uri} (not checked)"
    existing = next((p for p in (location, *location.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return False, f"local store {location} has no usable parent directory"

    writable = os.access(existing, os.W_OK)
    return writable, f"local store {location} ({'writable' if writable else 'not writable'})"
