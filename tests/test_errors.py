"""Typed errors: one line to describe any error, and an HTTP answer for each typed error."""

from __future__ import annotations

import pytest

from api.errors import STATUS_CODES
from core.errors import RunNotFound, ServiceError, describe


def _raised(error: Exception) -> Exception:
    """The error as code meets it in an `except` block."""
    try:
        raise error
    except Exception as caught:
        return caught


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            RuntimeError("connection refused\n[SQL: UPDATE training_runs ...]"),
            "RuntimeError: connection refused",
        ),
        (OSError(""), "OSError"),  # empty: no IndexError, no dangling colon
        (TimeoutError(), "TimeoutError"),
        (ValueError("\n  leading blank line\nsecond"), "ValueError: leading blank line"),
        (RunNotFound("abc"), "RunNotFound: no training run with experiment_id abc"),
    ],
)
def test_describe_gives_the_type_and_the_first_line(error: Exception, expected: str) -> None:
    assert describe(_raised(error)) == expected


def test_every_typed_error_has_an_http_answer() -> None:
    """A typed error without one would reach the client as a 500."""
    assert set(ServiceError.__subclasses__()) == set(STATUS_CODES)
    assert all(400 <= code < 600 for code in STATUS_CODES.values())
