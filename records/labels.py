"""A run's labels (name, tags, notes): the list filters they allow, merging a change into them, and the
MLflow run name and tags that mirror them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement

from api.schemas.labels import MAX_TAGS, LabelsUpdate
from core.errors import InvalidRequest
from records.tables import TrainingRun

# MLflow's own tags for a run's name and its description (the UI's "Description" box).
MLFLOW_RUN_NAME_TAG = "mlflow.runName"
MLFLOW_NOTE_TAG = "mlflow.note.content"


def default_run_name(run: TrainingRun) -> str:
    """The MLflow run name of a run that has no name of its own."""
    return f"{run.algorithm}-maze{run.maze_size}-{run.id[:8]}"


def label_filters(name_query: str | None, tag_filters: Sequence[str]) -> list[ColumnElement[bool]]:
    """`WHERE` clauses for `GET /experiments`: the name contains `name_query` (any case), and for each
    `key:value` the run has tag `key` equal to `value` (a bare `key`: has the tag at all)."""
    clauses: list[ColumnElement[bool]] = []
    if name_query:
        clauses.append(TrainingRun.name.icontains(name_query, autoescape=True))
    for item in tag_filters:
        key, has_value, value = item.partition(":")
        # SQLite's json_extract / PostgreSQL's ->>: the tag's text, NULL when the run lacks it.
        tag = TrainingRun.tags[key].as_string()
        clauses.append(tag == value if has_value else tag.is_not(None))
    return clauses


@dataclasses.dataclass(frozen=True)
class LabelChange:
    """What a `LabelsUpdate` does to one run.

    :param values: the columns to write.
    :param mlflow_tags: MLflow tags to set (the run name and description included).
    :param mlflow_removed: MLflow tags to delete.
    """

    values: dict[str, Any]
    mlflow_tags: dict[str, str]
    mlflow_removed: list[str]


def merge_labels(run: TrainingRun, update: LabelsUpdate) -> LabelChange:
    """Apply `update` (a JSON merge patch: only the fields it sets) to the run's current labels."""
    given = update.model_fields_set
    values: dict[str, Any] = {}
    mlflow_tags: dict[str, str] = {}
    removed: list[str] = []
    if "name" in given:
        values["name"] = update.name
        mlflow_tags[MLFLOW_RUN_NAME_TAG] = update.name or default_run_name(run)
    if "notes" in given:
        values["notes"] = update.notes or None
        if update.notes:
            mlflow_tags[MLFLOW_NOTE_TAG] = update.notes
        else:
            removed.append(MLFLOW_NOTE_TAG)
    if "tags" in given:
        current = dict(run.tags or {})
        changes = update.tags if update.tags is not None else dict.fromkeys(current)
        for key, value in changes.items():
            if value is None:
                if current.pop(key, None) is not None:
                    removed.append(key)
            else:
                current[key] = value
                mlflow_tags[key] = value
        if len(current) > MAX_TAGS:
            raise InvalidRequest(
                "tags", f"a run has at most {MAX_TAGS} tags; this change leaves {len(current)}"
            )
        values["tags"] = current
    return LabelChange(values, mlflow_tags, removed)


def mlflow_run_labels(run: TrainingRun) -> tuple[str, dict[str, str]]:
    """The MLflow run name and the user's tags (with the notes as the description) for a new MLflow run."""
    tags = dict(run.tags or {})
    if run.notes:
        tags[MLFLOW_NOTE_TAG] = run.notes
    return run.name or default_run_name(run), tags
