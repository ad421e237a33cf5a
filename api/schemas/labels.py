"""Models of a run's labels: name, tags and notes, given at start and changed by `PATCH /experiments/{id}`."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, StringConstraints, field_validator

from api.schemas.common import Strict

MAX_NAME_LENGTH = 200
MAX_TAGS = 20
MAX_TAG_KEY_LENGTH = 64
MAX_TAG_VALUE_LENGTH = 256
MAX_NOTES_LENGTH = 5000
# Keys the service sets on every MLflow run, and MLflow's own namespace: a user tag must not overwrite them.
RESERVED_TAG_KEYS = frozenset({"experiment_id", "algorithm", "maze_size", "stop_reason"})
RESERVED_TAG_PREFIX = "mlflow."

TAG_KEY_PATTERN = r"^[A-Za-z0-9_.\-/]+$"
# `key:value` or `key` in `GET /experiments?tag=`.
TAG_FILTER_PATTERN = r"^[A-Za-z0-9_.\-/]{1,64}(:[^\x00-\x1f\x7f]{0,256})?$"
# No control characters in one-line texts; notes may hold tabs and line breaks.
ONE_LINE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
NOTES_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"

RunName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=ONE_LINE_PATTERN)
]
NAME_DESCRIPTION = "A name for people, e.g. 'ppo-baseline'; searched by `GET /experiments?q=`."
TagKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_TAG_KEY_LENGTH, pattern=TAG_KEY_PATTERN),
]
TagValue = Annotated[str, StringConstraints(max_length=MAX_TAG_VALUE_LENGTH, pattern=ONE_LINE_PATTERN)]
Notes = Annotated[str, StringConstraints(max_length=MAX_NOTES_LENGTH, pattern=NOTES_PATTERN)]
NOTES_DESCRIPTION = "Free text about the run (shown as the MLflow run's description)."

TAGS_DESCRIPTION = (
    f'String labels, e.g. {{"team": "maze", "goal": "baseline"}}: at most {MAX_TAGS}; keys '
    f"1–{MAX_TAG_KEY_LENGTH} of A–Z a–z 0–9 _ . - /, not starting with '{RESERVED_TAG_PREFIX}' nor one of "
    f"{', '.join(sorted(RESERVED_TAG_KEYS))}; values up to {MAX_TAG_VALUE_LENGTH} characters, one line. "
    "Filter with `GET /experiments?tag=key:value`; also MLflow run tags."
)


def strict_tag_keys(max_tags: int) -> Any:
    """`json_schema_extra` for a tags field: pydantic describes the key pattern as `patternProperties`,
    which lets any other key through in JSON Schema; this says that keys must match it (and how many)."""

    def extra(schema: dict[str, Any]) -> None:
        for branch in [schema, *schema.get("anyOf", [])]:
            if branch.get("type") == "object":
                branch["additionalProperties"] = False
                branch["propertyNames"] = {
                    "minLength": 1,
                    "maxLength": MAX_TAG_KEY_LENGTH,
                    "pattern": TAG_KEY_PATTERN,
                }
                branch["maxProperties"] = max_tags

    return extra


def check_tag_keys(keys: list[str]) -> None:
    """Raise ValueError naming a reserved key among `keys`."""
    for key in keys:
        if key in RESERVED_TAG_KEYS or key.startswith(RESERVED_TAG_PREFIX):
            raise ValueError(f"tag key {key!r} is reserved (the service or MLflow sets it)")


class LabelsUpdate(Strict):
    """Body of `PATCH /experiments/{id}` (a JSON merge patch, RFC 7396): a field left out is unchanged;
    `name` or `notes` null clears it; in `tags` a key with a string sets it, a key with null removes it,
    and `tags: null` removes every tag."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "ppo-baseline", "tags": {"team": "maze", "obsolete": None}},
                {"notes": "Reached 100% on 10×10; keep as the reference run."},
            ]
        }
    )

    name: RunName | None = Field(None, description=NAME_DESCRIPTION + " null: no name.")
    tags: dict[TagKey, TagValue | None] | None = Field(
        None,
        description="Tags to set (string) or remove (null); the others are kept. " + TAGS_DESCRIPTION,
        json_schema_extra=strict_tag_keys(4 * MAX_TAGS),
    )
    notes: Notes | None = Field(None, description=NOTES_DESCRIPTION + " null: none.")

    @field_validator("tags")
    @classmethod
    def _no_reserved_keys(cls, value: dict[str, str | None] | None) -> dict[str, str | None] | None:
        if value is not None:
            if len(value) > 4 * MAX_TAGS:
                raise ValueError(f"at most {4 * MAX_TAGS} tag changes at once")
            check_tag_keys([key for key, tag in value.items() if tag is not None])
        return value


MAX_NOTIFY_URL_LENGTH = 2048


def check_notify_url(url: str) -> str:
    """An absolute http(s) URL with a host and no credentials; raises ValueError saying what is wrong."""
    if len(url) > MAX_NOTIFY_URL_LENGTH:
        raise ValueError(f"at most {MAX_NOTIFY_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"not a URL: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username or parts.password:
        raise ValueError("must not hold credentials (user:password@); put a token in the path or query")
    if port == 0 or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError("must be a valid URL (no port 0, spaces or control characters)")
    return url
